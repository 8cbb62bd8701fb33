//! cntnr-agent: the wiring of the `cntnr-agent` daemon (watch loops, leader
//! election, health checks, registration, env sync, status, HTTP API) and the
//! `cntnr` operator CLI.

pub mod cli;
