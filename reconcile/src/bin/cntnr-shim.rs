//! The per-container stdio/exit shim; see `cntnr_reconcile::shim`.

fn main() {
    std::process::exit(cntnr_reconcile::shim::main_with_args(
        std::env::args_os().skip(1).collect(),
    ));
}
