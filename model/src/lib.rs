//! cntnr-model: compose parsing, interpolation, merge, validation, the
//! normalized `Project`/`ServiceSpec`, the config hash, the store key layout
//! and the status/schedule record types. No IO besides reading the files it
//! is given; no tokio.
