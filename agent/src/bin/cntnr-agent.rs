//! `cntnr-agent`: one per host (see `cntnr_agent::daemon`).
//!
//! Invoked as `cntnr-shim` (the agent links itself under that name when no
//! `cntnr-shim` binary sits next to it), it is the per-container stdio/exit
//! shim of `cntnr_reconcile::shim` instead.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("cntnr-shim")) {
        let code = cntnr_reconcile::shim::main_with_args(args.collect());
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    cntnr_agent::daemon::main()
}
