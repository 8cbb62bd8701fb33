//! `cntnr`: the operator's CLI.

fn main() {
    eprintln!("cntnr: not implemented yet");
    std::process::exit(2);
}
