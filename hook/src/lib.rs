//! cntnr-hook: the OCI hook runc calls at `createRuntime` (CNI ADD into the
//! container's network namespace) and `poststop` (CNI DEL). It reads the OCI
//! state from stdin and the network request from the container annotations.
//!
//! Not built yet: this crate is filled in by the networking issue.
