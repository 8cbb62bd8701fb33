//! The `cntnr-hook` binary. See the crate docs of `cntnr_hook`.

fn main() {
    eprintln!("cntnr-hook: CNI networking is not implemented yet");
    std::process::exit(1);
}
