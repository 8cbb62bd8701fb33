//! cntnr-reconcile: the pure `plan(desired, observed) -> actions` function,
//! placement (`schedule`), the `Runtime` trait and its runc driver, the image
//! store (pull, import, unpack) and the OCI bundle/spec builder.
//!
//! Not built yet: this crate is filled in by the runtime and agent issues.
