//! cntnr-reconcile: the `Runtime` trait and its runc driver, the image store
//! (pull, import, unpack) and the OCI bundle/spec builder. (The pure
//! `plan(desired, observed)` and `schedule` live here too, filled in by the
//! agent issues.)
//!
//! Data path for one replica: [`images::ImageStore`] pulls/imports and
//! verifies blobs, [`unpack`] turns each layer into a read-only dir once,
//! [`bundle`] assembles an overlayfs rootfs and a `config.json`, and
//! [`runc::Runc`] (the [`runtime::Runtime`] implementation) runs it.

pub mod bundle;
pub mod digest;
pub mod images;
pub mod runc;
pub mod runtime;
pub mod shim;
pub mod unpack;
