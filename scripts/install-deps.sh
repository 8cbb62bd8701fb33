#!/usr/bin/env bash
# Installs every system dependency cntnr needs, on Debian bookworm, as root.
#
# Idempotent: a second run checks what is there and exits in seconds without
# touching the network. See DEVELOPERS.md ("System dependencies") for the method.
#
#   * bookworm packages: the system's apt-get, only when one is missing;
#   * etcd 3.5 (Debian trixie `etcd-server` + `etcd-client`) and Consul 1.8.7
#     (Debian bullseye `consul`): a private apt state under .deps/apt, then
#     `apt-get download` and `dpkg -x` into .deps/<package>/, with the binaries
#     linked into .deps/bin/. The system's apt configuration and lists stay
#     untouched.
#
# Environment:
#   CNTNR_DEPS_DIR   where the private packages go (default: <repo>/.deps)
#   DEBIAN_MIRROR    the Debian mirror for the private suites (default: the
#                    system's own, else http://deb.debian.org/debian)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS=${CNTNR_DEPS_DIR:-$ROOT/.deps}

# Packages from the machine's own suite (bookworm).
SYSTEM_PACKAGES=(
  runc
  busybox-static
  containernetworking-plugins
  protobuf-compiler
  docker-registry
  skopeo
  umoci
  tini
  uidmap
  iproute2
  iptables
  curl
  ca-certificates
  jq
  dnsutils
  shellcheck
)

# Packages from other Debian suites: "package suite binary...".
PRIVATE_PACKAGES=(
  "etcd-server trixie etcd etcdutl"
  "etcd-client trixie etcdctl"
  "consul bullseye consul"
)
ETCD_WANT='^etcd Version: 3\.5\.'
CONSUL_WANT='^Consul v1\.8\.7$'
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'install-deps: %s\n' "$*" >&2
  exit 1
}

check_toolchain() {
  local tool
  for tool in cargo rustc; do
    command -v "$tool" >/dev/null 2>&1 ||
      die "$tool not found on PATH. cntnr needs a Rust toolchain (rustup's stable, see rust-version in Cargo.toml); this script cannot download one."
  done
}

check_platform() {
  [[ $(id -u) -eq 0 ]] || die "run as root (it installs Debian packages)"
  command -v dpkg-query >/dev/null 2>&1 || die "this is not a Debian system (dpkg-query missing)"
  [[ -r $KEYRING ]] || die "$KEYRING missing: apt-get install debian-archive-keyring"
}

is_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

install_system_packages() {
  local missing=() pkg
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "bookworm packages: all ${#SYSTEM_PACKAGES[@]} installed"
    return
  fi
  log "bookworm packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # An unreachable third-party source must not stop the Debian packages.
  apt-get -o DPkg::Lock::Timeout=300 update -qq ||
    log "apt-get update reported errors; installing from the lists it has"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# The mirror the system already uses, so a machine behind a local mirror keeps
# using it.
system_mirror() {
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list)
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# apt-get on a private state directory: its own sources, lists and cache, so
# neither /etc/apt nor /var/lib/apt/lists is read for sources or written.
private_apt() {
  local apt="$DEPS/apt"
  apt-get \
    -o Dir::Etc::SourceList=/dev/null \
    -o Dir::Etc::SourceParts="$apt/sources.list.d" \
    -o Dir::Etc::Preferences=/dev/null \
    -o Dir::Etc::PreferencesParts="$apt/preferences.d" \
    -o Dir::State::Lists="$apt/lists" \
    -o Dir::Cache="$apt/cache" \
    -o Dir::Cache::Archives="$apt/archives" \
    -o APT::Sandbox::User=root \
    -o APT::Get::List-Cleanup=true \
    -o Acquire::Languages=none \
    -o APT::Architecture="$(dpkg --print-architecture)" \
    -o APT::Architectures="$(dpkg --print-architecture)" \
    -qq "$@"
}

binary_ok() { # name pattern
  local bin="$DEPS/bin/$1" out
  [[ -x $bin ]] || return 1
  case $1 in
    etcd) out=$("$bin" --version 2>/dev/null | head -n1) ;;
    consul) out=$("$bin" version 2>/dev/null | head -n1) ;;
    *) return 1 ;;
  esac
  [[ $out =~ $2 ]]
}

private_ok() {
  binary_ok etcd "$ETCD_WANT" && binary_ok consul "$CONSUL_WANT" &&
    [[ -x $DEPS/bin/etcdctl && -x $DEPS/bin/etcdutl ]]
}

install_private_packages() {
  if private_ok; then
    log "private packages: etcd $("$DEPS/bin/etcd" --version | awk 'NR==1 { print $3 }'), consul $("$DEPS/bin/consul" version | awk 'NR==1 { print $2 }') already in $DEPS"
    return
  fi
  local apt="$DEPS/apt" mirror suites=() entry pkg suite rest deb bin
  mirror=${DEBIAN_MIRROR:-$(system_mirror)}
  for entry in "${PRIVATE_PACKAGES[@]}"; do
    read -r _ suite _ <<<"$entry"
    [[ " ${suites[*]} " == *" $suite "* ]] || suites+=("$suite")
  done
  log "private packages: ${suites[*]} from $mirror into $DEPS"
  mkdir -p "$apt/sources.list.d" "$apt/preferences.d" "$apt/lists/partial" \
    "$apt/cache" "$apt/archives/partial" "$DEPS/bin"
  cat >"$apt/sources.list.d/cntnr.sources" <<EOF
# Written by scripts/install-deps.sh; used only through its private apt-get.
Types: deb
URIs: $mirror
Suites: ${suites[*]}
Components: main
Signed-By: $KEYRING
EOF
  private_apt update

  for entry in "${PRIVATE_PACKAGES[@]}"; do
    read -r pkg suite rest <<<"$entry"
    log "  $pkg from $suite"
    rm -f "$apt/archives/${pkg}"_*.deb
    (cd "$apt/archives" && private_apt download "$pkg/$suite")
    deb=$(ls "$apt/archives/${pkg}"_*.deb)
    rm -rf "${DEPS:?}/$pkg"
    dpkg-deb -x "$deb" "$DEPS/$pkg"
    dpkg-deb -f "$deb" Version >"$DEPS/$pkg/.version"
    for bin in $rest; do
      [[ -x $DEPS/$pkg/usr/bin/$bin ]] || die "$pkg has no usr/bin/$bin"
      ln -sfn "../$pkg/usr/bin/$bin" "$DEPS/bin/$bin"
      # Go binaries: static, or linked only against libc. Anything else would
      # need the other suite's libraries, which we do not install.
      if ldd "$DEPS/bin/$bin" 2>&1 | grep -q 'not found'; then
        die "$bin needs libraries this system lacks: $(ldd "$DEPS/bin/$bin" 2>&1 | grep 'not found' | tr '\n' ' ')"
      fi
    done
  done
  binary_ok etcd "$ETCD_WANT" ||
    die "etcd is not 3.5.x: '$("$DEPS/bin/etcd" --version 2>&1 | head -n1)'"
  binary_ok consul "$CONSUL_WANT" ||
    die "consul is not 1.8.7: '$("$DEPS/bin/consul" version 2>&1 | head -n1)'"
  log "private packages: etcd $("$DEPS/bin/etcd" --version | awk 'NR==1 { print $3 }'), consul $("$DEPS/bin/consul" version | awk 'NR==1 { print $2 }')"
}

main() {
  check_toolchain
  check_platform
  # One run at a time (scripts/main.sh and scripts/test.sh may overlap).
  mkdir -p "$DEPS"
  exec 9>"$DEPS/.lock"
  flock 9
  install_system_packages
  install_private_packages
  log "dependencies ready (binaries in $DEPS/bin)"
}

main "$@"
