//! cntnr-e2e: end-to-end tests that drive the built binaries as an operator
//! would, and the shared harness that starts real etcd and Consul servers for
//! every integration test in the workspace.
