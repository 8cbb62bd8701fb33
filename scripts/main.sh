#!/usr/bin/env bash
# README command 1: installs the system dependencies, builds cntnr, builds
# the example image and runs the example project (examples/hello) on the
# embedded store.
#
# Today the agent does not exist yet, so this runs what does: the build, the
# image, and `cntnr validate` on the example project. The agent comes next.
#
#   scripts/main.sh [--release]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# rustup installs into ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
  PATH=${HOME:-/root}/.cargo/bin:$PATH
fi

profile=debug
cargo_flags=()
case ${1:-} in
  --release)
    profile=release
    cargo_flags=(--release)
    ;;
  "") ;;
  *)
    echo "usage: scripts/main.sh [--release]" >&2
    exit 2
    ;;
esac

step() { printf '\n==> %s\n' "$*" >&2; }

step "system dependencies"
./scripts/install-deps.sh

step "build ($profile)"
cargo build --workspace --bins "${cargo_flags[@]}"
CNTNR=target/$profile/cntnr

step "example image (examples/hello/image, tag latest)"
examples/hello/build-image.sh

COMPOSE=examples/hello/compose.yaml
[[ -f $COMPOSE ]] || {
  echo "main: $COMPOSE is missing" >&2
  exit 1
}
step "cntnr validate -f $COMPOSE"
"$CNTNR" validate -f "$COMPOSE"

step "next: the agent"
cat >&2 <<'MSG'
The example project is valid. cntnr-agent, which would now run it on the
embedded store (dir://), does not exist yet: it comes next. Until then this
command stops after validation.
MSG
