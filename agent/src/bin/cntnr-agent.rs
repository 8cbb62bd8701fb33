//! `cntnr-agent`: one per host. Not implemented yet (the agent issue).

fn main() {
    eprintln!("cntnr-agent: the agent is not implemented yet; `cntnr validate` works today");
    std::process::exit(1);
}
