//! cntnr-reconcile: the `Runtime` trait and its runc driver, the image store
//! (pull, import, unpack) and the OCI bundle/spec builder. (The pure
//! `plan(desired, observed)` and `schedule` live here too, filled in by the
//! agent issues.)
//!
//! Data path for one replica: [`images::ImageStore`] pulls/imports and
//! verifies blobs, [`unpack`] turns each layer into a read-only dir once,
//! [`bundle`] assembles an overlayfs rootfs and a `config.json` from a
//! [`bundle::ContainerRequest`] (built from the model's `ServiceSpec`), and
//! [`runc::Runc`] (the [`runtime::Runtime`] implementation) runs it.
//!
//! Decisions, in one place (details in each module):
//! - Layers are unpacked once per chain id into overlay lower dirs, with
//!   overlayfs-native whiteouts (0/0 char devices, `trusted.overlay.opaque`),
//!   so a container's rootfs is one overlay mount: no copy, constant cost.
//!   Rootless falls back to applying the layers into a private copy.
//! - Detached containers' stdio goes through [`shim`] (`cntnr-shim`, a bin of
//!   this crate installed next to the agent): it survives agent restarts,
//!   size-caps and rotates the log, and as child subreaper records the init's
//!   exit code. A systemd unit for the agent needs `KillMode=process` so that
//!   stopping the agent leaves the shims (and containers) running.
//! - Exit detection is a pidfd on the container's init, registered with
//!   tokio; it needs only `runc state`, so it works after an agent restart.
//! - The runtime's state (runc + annotations) is the only truth: the driver
//!   keeps no database; foreign containers (no `cntnr.project` annotation)
//!   are refused by every mutating verb and hidden from `list`.

pub mod bundle;
pub mod digest;
#[cfg(feature = "fake-runtime")]
pub mod fake;
pub mod images;
pub mod plan;
pub mod rollout;
pub mod runc;
pub mod runtime;
pub mod schedule;
pub mod shim;
pub mod unpack;
