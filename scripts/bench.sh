#!/usr/bin/env bash
# Runs every benchmark of the workspace (`cargo bench --workspace`), as root,
# after installing what the benchmarks need beyond the test dependencies.
#
#   * the test dependencies: scripts/install-deps.sh (the kv bench needs etcd
#     and Consul from it);
#   * Debian's podman, the baseline `podman run -d` of the runtime bench
#     (reconcile/benches/runtime.rs), which copies its image from an OCI
#     layout into podman's storage with skopeo: no registry is contacted;
#   * a containers.conf of our own (CONTAINERS_CONF, under the deps dir; the
#     system's /etc/containers stays untouched): runc as podman's runtime, so
#     both sides run the same runtime; cgroupfs and file events when systemd is
#     not PID 1; and default_ulimits equal to this shell's hard limits, since
#     podman's defaults (nofile 1048576) fail where the hard limit is lower.
#
# Idempotent. Arguments replace `--workspace` in the cargo call, e.g.
# `scripts/bench.sh -p cntnr-reconcile --bench runtime`.
#
# Environment:
#   CNTNR_DEPS_DIR     as for install-deps.sh (default: <repo>/.deps)
#   CNTNR_BENCH_ITERS  iterations per figure of the runtime bench (default 10)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS=${CNTNR_DEPS_DIR:-$ROOT/.deps}

BENCH_PACKAGES=(
  podman
)

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

is_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

install_bench_packages() {
  local missing=() pkg
  for pkg in "${BENCH_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "bench packages: ${BENCH_PACKAGES[*]} installed"
    return
  fi
  log "bench packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq ||
    log "apt-get update reported errors; installing from the lists it has"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

write_containers_conf() {
  local conf="$DEPS/bench/containers.conf" nofile nproc cgroups events
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ $nofile == unlimited ]] && nofile=1048576
  [[ $nproc == unlimited ]] && nproc=4194304
  if [[ -d /run/systemd/system ]]; then
    cgroups=systemd events=journald
  else
    cgroups=cgroupfs events=file
  fi
  mkdir -p "$DEPS/bench"
  cat >"$conf.tmp" <<EOF
# Written by scripts/bench.sh for podman in the runtime bench; not used otherwise.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "$cgroups"
events_logger = "$events"
EOF
  mv "$conf.tmp" "$conf"
  export CONTAINERS_CONF=$conf
  log "podman: CONTAINERS_CONF=$conf (runc, $cgroups, nofile $nofile, nproc $nproc)"
}

main() {
  [[ $(id -u) -eq 0 ]] || die "run as root (runc, overlayfs, Debian packages)"
  "$ROOT/scripts/install-deps.sh"
  install_bench_packages
  write_containers_conf
  podman --version >/dev/null || die "podman does not run"
  PATH="$DEPS/bin:$PATH"
  export PATH
  cd "$ROOT"
  if (($# == 0)); then
    set -- --workspace
  fi
  cargo bench "$@"
}

main "$@"
