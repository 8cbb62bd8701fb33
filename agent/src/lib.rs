//! cntnr-agent: the wiring of the `cntnr-agent` daemon (watch loops, leader
//! election, status, HTTP API; the runtime side comes with the reconcile
//! crate) and the `cntnr` operator CLI.

pub mod cli;
pub mod daemon;
pub mod election_replica;
pub mod envsync;
pub mod health;
pub mod registration;
pub mod store;
pub mod table;
