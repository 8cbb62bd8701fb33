//! `cntnr-agent`: one per host (see `cntnr_agent::daemon`).
//!
//! Invoked as `cntnr-shim` (the agent links itself under that name when no
//! `cntnr-shim` binary sits next to it), it is the per-container stdio/exit
//! shim of `cntnr_reconcile::shim` instead. Invoked as `cntnr-hook` (runc
//! runs the agent's executable under that name as a container's OCI hook
//! when no `cntnr-hook` binary sits next to it), it is the CNI hook of
//! `cntnr_hook::cli`.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name();
    if name == Some(std::ffi::OsStr::new("cntnr-shim")) {
        let code = cntnr_reconcile::shim::main_with_args(args.collect());
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if name == Some(std::ffi::OsStr::new("cntnr-hook")) {
        let code = cntnr_hook::cli::main_with_args(args.collect());
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    cntnr_agent::daemon::main()
}
