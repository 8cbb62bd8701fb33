//! `cntnr-agent`: one per host (see `cntnr_agent::daemon`).

fn main() -> std::process::ExitCode {
    cntnr_agent::daemon::main()
}
