//! `cntnr`: the operator's CLI (see `cntnr_agent::cli`).

fn main() -> std::process::ExitCode {
    cntnr_agent::cli::main()
}
