#!/usr/bin/env bash
# README command 2: installs the system dependencies, then checks formatting,
# runs clippy with warnings as errors, and runs every test of the workspace.
# Exits non-zero on the first failure. .ci/run calls exactly this.
#
# Plain `cargo test`, not nextest: the harness starts one etcd and one Consul
# per test binary, and nextest would start them once per test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# rustup installs into ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
  PATH=${HOME:-/root}/.cargo/bin:$PATH
fi

step() { printf '\n==> %s\n' "$*" >&2; }

step "system dependencies"
./scripts/install-deps.sh

step "shellcheck"
shellcheck scripts/*.sh examples/*/*.sh .ci/run

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "all checks passed"
