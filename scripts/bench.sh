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
#     not PID 1; and default_ulimits that a probe container accepts (see
#     configure_podman), since podman's defaults (1048576) fail where the
#     hard limits are lower;
#   * podman-compose from PyPI in a venv of its own under the deps dir
#     (<deps>/podman-compose), the baseline of the agent bench
#     (agent/benches/agent.rs), which finds it through CNTNR_PODMAN_COMPOSE.
#
# Without arguments, also the fleet bench (agent/benches/fleet.rs: 100
# agents on an in-memory runtime against etcd and Consul), which
# `--workspace` skips: it needs the agent's `bench-fake-runtime` feature.
#
# Idempotent. Arguments replace both cargo calls, e.g.
# `scripts/bench.sh -p cntnr-reconcile --bench runtime` or
# `scripts/bench.sh -p cntnr-agent --features bench-fake-runtime --bench fleet`.
#
# Environment:
#   CNTNR_DEPS_DIR     as for install-deps.sh (default: <repo>/.deps)
#   CNTNR_BENCH_ITERS  iterations per figure (runtime bench: default 10;
#                      agent bench: default 20)
#   CNTNR_BENCH_IDLE_SECS  the agent bench's idle window (default 60); the
#                      fleet bench's idle windows (default 30 each)
#   CNTNR_BENCH_FLEET_NODES  agents in the fleet bench (default 100)
#   CNTNR_BENCH_FLEET_STORES the fleet bench's stores (default etcd,consul)
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

write_containers_conf() { # nofile nproc
  local conf="$DEPS/bench/containers.conf" cgroups events
  if [[ -d /run/systemd/system ]]; then
    cgroups=systemd events=journald
  else
    cgroups=cgroupfs events=file
  fi
  mkdir -p "$DEPS/bench"
  cat >"$conf.tmp" <<EOF
# Written by scripts/bench.sh for podman in the runtime bench; not used otherwise.
[containers]
default_ulimits = ["nofile=$1:$1", "nproc=$2:$2"]

[engine]
runtime = "runc"
cgroup_manager = "$cgroups"
events_logger = "$events"
EOF
  mv "$conf.tmp" "$conf"
  export CONTAINERS_CONF=$conf
}

# One container from a busybox rootfs dir: does podman start containers here?
podman_probe() {
  local rootfs="$DEPS/bench/probe-rootfs"
  mkdir -p "$rootfs/bin"
  cp -u /bin/busybox "$rootfs/bin/busybox"
  podman run --rm --network none --rootfs "$rootfs" /bin/busybox true 2>&1
}

# podman's defaults (nofile and nproc 1048576) exceed the hard limits of a
# machine like this one, and root may lack CAP_SYS_RESOURCE to raise them:
# start at this shell's hard limits and halve nproc (which podman's own
# processes may hold lower) until a container starts.
configure_podman() {
  local nofile nproc out
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ $nofile == unlimited ]] && nofile=1048576
  [[ $nproc == unlimited ]] && nproc=4194304
  while true; do
    write_containers_conf "$nofile" "$nproc"
    if out=$(podman_probe); then
      break
    fi
    if [[ $out != *rlimit* ]] || ((nproc <= 1024)); then
      die "podman cannot start a container: $out"
    fi
    nproc=$((nproc / 2))
  done
  log "podman: CONTAINERS_CONF=$CONTAINERS_CONF (runc; nofile $nofile, nproc $nproc)"
}

# podman-compose (PyPI) in a project-local venv; its path goes to the agent
# bench as CNTNR_PODMAN_COMPOSE.
install_podman_compose() {
  local venv="$DEPS/podman-compose" python=python3
  [[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
  if [[ ! -x $venv/bin/podman-compose ]]; then
    log "podman-compose: installing into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check podman-compose
  fi
  CNTNR_PODMAN_COMPOSE=$venv/bin/podman-compose
  export CNTNR_PODMAN_COMPOSE
  log "podman-compose: $("$CNTNR_PODMAN_COMPOSE" --version 2>/dev/null | paste -sd " " -)"
}

main() {
  [[ $(id -u) -eq 0 ]] || die "run as root (runc, overlayfs, Debian packages)"
  "$ROOT/scripts/install-deps.sh"
  install_bench_packages
  configure_podman
  install_podman_compose
  PATH="$DEPS/bin:$PATH"
  export PATH
  cd "$ROOT"
  if (($# == 0)); then
    cargo bench --workspace
    # Last: it builds cntnr-agent with the in-memory runtime.
    cargo bench -p cntnr-agent --features bench-fake-runtime --bench fleet
  else
    cargo bench "$@"
  fi
}

main "$@"
