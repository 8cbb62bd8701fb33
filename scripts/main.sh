#!/usr/bin/env bash
# README command 1: installs the system dependencies, builds cntnr, builds
# the example image and runs the example project (examples/hello) on the
# embedded dir store, with a real cntnr-agent and real runc containers.
#
#   scripts/main.sh [--release]     run it (the agent keeps running after)
#   scripts/main.sh --stop          remove the project, stop the agent
#
# Everything lives in the git-ignored .cache/example/ of this checkout:
#   state/          the agent's --state-dir (images, bundles, logs, and the
#                   dir store in state/store)
#   agent.log       the agent's log;  agent.pid  its pid
# runc's state is under /run/cntnr-example/runc (--runtime-root). The agent
# listens on 127.0.0.1:${CNTNR_EXAMPLE_LISTEN_PORT:-7475} (/status, /metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# rustup installs into ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
  PATH=${HOME:-/root}/.cargo/bin:$PATH
fi

profile=debug
cargo_flags=()
mode=run
case ${1:-} in
  --release)
    profile=release
    cargo_flags=(--release)
    ;;
  --stop) mode=stop ;;
  "") ;;
  *)
    echo "usage: scripts/main.sh [--release | --stop]" >&2
    exit 2
    ;;
esac

EXAMPLE=$ROOT/.cache/example
STATE=$EXAMPLE/state
RUNTIME_ROOT=/run/cntnr-example/runc
LISTEN=127.0.0.1:${CNTNR_EXAMPLE_LISTEN_PORT:-7475}
PIDFILE=$EXAMPLE/agent.pid
COMPOSE=examples/hello/compose.yaml

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'main: %s\n' "$*" >&2
  exit 1
}

agent_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Asks a running agent to drain and exit (its containers keep running).
stop_agent() {
  local pid
  pid=$(agent_pid) || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$PIDFILE"
}

cntnr() { "$CNTNR" --state-dir "$STATE" "$@"; }

if [[ $mode == stop ]]; then
  CNTNR=
  for c in target/release/cntnr target/debug/cntnr; do
    [[ -x $c && ( -z $CNTNR || $c -nt $CNTNR ) ]] && CNTNR=$ROOT/$c
  done
  [[ -n $CNTNR ]] || die "cntnr is not built; nothing to stop"
  if agent_pid >/dev/null; then
    step "cntnr rm hello (the agent stops and removes the containers)"
    cntnr rm hello || true
    for _ in $(seq 300); do
      [[ $(cntnr ps hello --json | jq length) == 0 ]] && break
      sleep 0.2
    done
    step "stopping cntnr-agent"
    stop_agent
  fi
  echo "stopped; state kept in $EXAMPLE (delete it to start from scratch)" >&2
  exit 0
fi

step "system dependencies"
./scripts/install-deps.sh

step "build ($profile)"
cargo build --workspace --bins "${cargo_flags[@]}"
CNTNR=$ROOT/target/$profile/cntnr
AGENT=$ROOT/target/$profile/cntnr-agent

step "example image (examples/hello/image, tag latest)"
examples/hello/build-image.sh

step "cntnr validate -f $COMPOSE"
"$CNTNR" validate -f "$COMPOSE" >/dev/null
echo "valid" >&2

step "cntnr-agent on the embedded store (dir://$STATE/store)"
mkdir -p "$EXAMPLE"
# A previous run's agent is replaced; its containers are adopted, not restarted.
stop_agent
setsid "$AGENT" --state-dir "$STATE" --runtime-root "$RUNTIME_ROOT" \
  --listen "$LISTEN" --allow-host-network \
  </dev/null >"$EXAMPLE/agent.log" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 100); do
  curl -fsS "http://$LISTEN/healthz" >/dev/null 2>&1 && break
  agent_pid >/dev/null || die "cntnr-agent exited: $(tail -n 5 "$EXAMPLE/agent.log")"
  sleep 0.1
done
echo "agent pid $(agent_pid), log $EXAMPLE/agent.log, http://$LISTEN/status" >&2

step "cntnr deploy -f $COMPOSE"
cntnr deploy -f "$COMPOSE"

step "waiting until every container runs"
want=3 # web x2, greeter x1
ok=
for _ in $(seq 300); do
  n=$(cntnr ps hello --json |
    jq '[.[].status.containers[]? | select(.state == "running")] | length')
  if [[ $n == "$want" ]]; then
    ok=1
    break
  fi
  sleep 0.2
done
cntnr ps
[[ -n $ok ]] || die "not everything runs after 60s; see $EXAMPLE/agent.log"

step "the web service answers (one port per replica: 18081, 18082)"
for port in 18081 18082; do
  printf 'GET http://127.0.0.1:%s/ -> ' "$port"
  curl -fsS --max-time 5 "http://127.0.0.1:$port/" || die "web on port $port does not answer"
done
step "greeter's log (cntnr logs hello greeter)"
sleep 1
cntnr logs hello greeter | tail -n 3

cat >&2 <<MSG

The example keeps running under cntnr-agent (pid $(agent_pid)).
  $CNTNR --state-dir $STATE ps    # containers
  $CNTNR --state-dir $STATE logs hello web --replica 2
  curl http://$LISTEN/status    # the agent's view
Stop it (removes the project, then stops the agent):
  scripts/main.sh --stop
MSG
