//! The `cntnr-hook` binary: `cntnr-hook create|delete|check`, OCI state on
//! stdin. See `cntnr_hook::cli` and the crate docs of `cntnr_hook`.

fn main() {
    let code = cntnr_hook::cli::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
