#!/usr/bin/env bash
# RabbitMQ (Debian's rabbitmq-server) for the test suite:
#   AMQP            amqp://guest:guest@127.0.0.1:5672/%2f
#   management API  http://guest:guest@127.0.0.1:15672/api/
# guest/guest only works from loopback, which is all the tests use.
#
#   scripts/services/rabbitmq.sh [start]   install (once), configure, start, wait
#   scripts/services/rabbitmq.sh stop      stop the whole node (rabbitmqctl stop)
#   scripts/services/rabbitmq.sh cycle-app rabbitmqctl stop_app && start_app, wait
#   scripts/services/rabbitmq.sh status    exit 0 when the management API answers
#
# Tests simulate a broker outage with `rabbitmqctl stop_app && rabbitmqctl
# start_app` (the node stays up, the AMQP listener goes away and comes back).
# That works as root: the /usr/sbin wrappers re-run the CLI as the rabbitmq
# user (whose HOME holds the Erlang cookie), and this script also copies the
# cookie to root's HOME for direct /usr/lib/rabbitmq/bin/* invocations.
# `cycle-app` below runs exactly that cycle and waits for the API again.
#
# Everything listens on 127.0.0.1 only: AMQP, management, Erlang
# distribution (25672) and epmd (4369).
#
# Environment: RABBITMQ_START_TIMEOUT (seconds, default 120);
# BACKSTOP_FRESH_STORAGE=1: `start` of a node that is not running removes its
# queues and messages first (scripts/services/all.sh sets it).
set -euo pipefail

SVC=rabbitmq
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}
API=http://127.0.0.1:15672/api
ETC=/etc/rabbitmq
NODE=rabbit@localhost
MNESIA=/var/lib/rabbitmq/mnesia
export ERL_EPMD_ADDRESS=127.0.0.1

api() { curl -fsS -m 5 -u guest:guest "$@"; }
api_ok() { api "$API/overview" >/dev/null 2>&1; }
ping_ok() { timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
app_running() { timeout 30 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }

# write_if_changed FILE: stdin becomes FILE unless it already has that content.
write_if_changed() {
  local f=$1 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
  install -m 644 "$tmp" "$f"
  rm -f "$tmp"
  say "wrote $f"
}

configure() {
  mkdir -p "$ETC"
  local changed=0
  write_if_changed "$ETC/rabbitmq.conf" <<'EOF' && changed=1
# written by backstop scripts/services/rabbitmq.sh (test broker, loopback only)
listeners.tcp.default = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
loopback_users.guest = true
EOF
  write_if_changed "$ETC/rabbitmq-env.conf" <<'EOF' && changed=1
# written by backstop scripts/services/rabbitmq.sh (test broker, loopback only)
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  write_if_changed "$ETC/enabled_plugins" <<'EOF' && changed=1
[rabbitmq_management].
EOF
  chown rabbitmq:rabbitmq "$ETC/enabled_plugins" 2>/dev/null || true
  # File descriptors: `su rabbitmq` (pam_limits) starts the node with a soft
  # limit of 1024. Every quorum queue holds open files, and a node with a
  # few hundred queues (test runs leave some) runs out: it then accepts TCP
  # but never completes an AMQP handshake, so clients time out.
  write_if_changed /etc/security/limits.d/backstop-rabbitmq.conf <<'EOF' && changed=1
# written by backstop scripts/services/rabbitmq.sh
rabbitmq soft nofile 16384
rabbitmq hard nofile 16384
EOF
  # Let root-run Erlang CLI tools share the node's cookie.
  local cookie=/var/lib/rabbitmq/.erlang.cookie
  if [[ -f $cookie ]] && ! cmp -s "$cookie" "${HOME:-/root}/.erlang.cookie"; then
    install -m 400 "$cookie" "${HOME:-/root}/.erlang.cookie"
  fi
  return $((1 - changed)) # 0 when something changed
}

# After `rabbitmqctl stop` returns, the Erlang VM may linger a few seconds;
# wait until its listeners (AMQP, management, distribution) are closed.
wait_node_gone() {
  wait_until 60 "node to stop (ports 5672/15672/25672 closed)" bash -c '
    for p in 5672 15672 25672; do
      (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && exit 1
    done; exit 0' || exit 1
}

quorum_probe() {
  local q=$API/queues/%2f/backstop-probe
  api -X PUT -H 'content-type: application/json' \
    -d '{"durable":true,"arguments":{"x-queue-type":"quorum"}}' "$q" >/dev/null ||
    die "declaring a quorum queue through the management API failed"
  local info
  info=$(api "$q") || die "quorum probe queue not readable"
  grep -q '"type":"quorum"' <<<"$info" || die "probe queue is not a quorum queue: $info"
  api -X DELETE "$q" >/dev/null || die "deleting the quorum probe queue failed"
  say "quorum queue declare/delete works"
}

wait_ready() {
  local t0=$SECONDS
  wait_until "$TIMEOUT" "rabbitmq-diagnostics ping" ping_ok ||
    { tail -n 30 /var/log/rabbitmq/*.log >&2 2>/dev/null || true; exit 1; }
  local left=$((TIMEOUT - (SECONDS - t0)))
  ((left > 10)) || left=10
  wait_until "$left" "management API $API/overview" api_ok ||
    { tail -n 30 /var/log/rabbitmq/rabbit@localhost.log >&2 2>/dev/null || true; exit 1; }
  wait_until 10 "AMQP listener 127.0.0.1:5672" tcp_open 5672 || exit 1
}

# True when the running node may open enough files (see configure).
fd_limit_ok() {
  local pid
  # The node that listens on 5672 (the command line does not name it).
  pid=$(ss -ltnpH 'sport = :5672' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
  [[ -n $pid ]] || return 0
  awk '/^Max open files/ { exit !($4 >= 16384) }' "/proc/$pid/limits"
}

start() {
  if pkg_installed rabbitmq-server && api_ok && tcp_open 5672 && fd_limit_ok; then
    say "already running (AMQP 127.0.0.1:5672, API $API)"
    return 0
  fi
  apt_install rabbitmq-server curl
  local changed=0
  configure && changed=1
  fd_limit_ok || changed=1
  local t0=$SECONDS
  if ping_ok; then
    if ((changed)); then
      say "configuration (or the node's file limit) changed while the node runs; restarting node"
      rabbitmqctl -q stop >/dev/null 2>&1 || true
      wait_node_gone
      say "starting node (rabbitmq-server -detached)"
      rabbitmq-server -detached
    elif ! app_running; then
      say "node is up but the app is stopped; rabbitmqctl start_app"
      rabbitmqctl -q start_app
    else
      say "node is up; waiting for listeners"
    fi
  else
    if [[ ${BACKSTOP_FRESH_STORAGE:-0} == 1 && -d $MNESIA/$NODE ]]; then
      say "starting on empty storage (removing $MNESIA/$NODE of earlier runs)"
      rm -rf "${MNESIA:?}/$NODE" "$MNESIA/$NODE"-*
    fi
    # epmd first, bound to loopback (the broker would otherwise start one).
    if ! tcp_open 4369; then epmd -address 127.0.0.1 -daemon; fi
    say "starting node (rabbitmq-server -detached)"
    rabbitmq-server -detached
  fi
  wait_ready
  quorum_probe
  say "up after $((SECONDS - t0))s (AMQP 127.0.0.1:5672, API $API)"
}

stop() {
  if ! ping_ok; then say "not running"; return 0; fi
  say "stopping node (rabbitmqctl stop)"
  rabbitmqctl -q stop >/dev/null
  wait_node_gone
  say "stopped"
}

cycle_app() {
  local t0=$SECONDS
  say "rabbitmqctl stop_app"
  rabbitmqctl -q stop_app >/dev/null
  wait_until 30 "AMQP listener to close" bash -c '! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null' || exit 1
  say "rabbitmqctl start_app"
  rabbitmqctl -q start_app >/dev/null
  wait_ready
  say "app cycled in $((SECONDS - t0))s"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  cycle-app) cycle_app ;;
  status) if api_ok; then say "running"; else say "not answering at $API"; exit 1; fi ;;
  *) die "usage: $0 [start|stop|restart|cycle-app|status]" ;;
esac
