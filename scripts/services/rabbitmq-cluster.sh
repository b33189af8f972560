#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on 127.0.0.1 for the cluster suites:
#   node N (1..3)  bs-cN@localhost
#   AMQP           amqp://guest:guest@127.0.0.1:568N/%2f
#   management     http://guest:guest@127.0.0.1:1568N/api/
#   distribution   2568N (epmd 4369, shared with the other nodes on the host)
#
#   scripts/services/rabbitmq-cluster.sh start      start the 3 nodes, join 2 and 3 to 1, wait
#   scripts/services/rabbitmq-cluster.sh stop       stop every node and delete its data
#   scripts/services/rabbitmq-cluster.sh status     exit 0 when all 3 nodes run the app
#   scripts/services/rabbitmq-cluster.sh kill N     kill -9 node N (its data stays)
#   scripts/services/rabbitmq-cluster.sh restart N  start node N again (it rejoins), wait
#
# `start` prints the AMQP URLs, comma-separated, on its last line of stdout
# (what `RabbitMq::connect` and `order-worker --url` take). The nodes run as
# the rabbitmq user (whose HOME holds the Erlang cookie rabbitmqctl uses),
# with a file-descriptor limit of 16384 (see rabbitmq.sh: at 1024 a node with
# many quorum queues wedges), each with its own data, logs and configuration
# under $BACKSTOP_CLUSTER_DIR/rabbitmq (default /var/tmp/backstop-clusters).
# Only one cluster (this or kafka-cluster.sh) should run at a time.
#
# Environment: RABBITMQ_START_TIMEOUT (seconds per node, default 120).
set -euo pipefail

SVC=rabbitmq-cluster
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=${BACKSTOP_CLUSTER_DIR:-/var/tmp/backstop-clusters}/rabbitmq
TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}
NODES=(1 2 3)
export ERL_EPMD_ADDRESS=127.0.0.1

node_name() { echo "bs-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
api_port() { echo $((15680 + $1)); }
dist_port() { echo $((25680 + $1)); }
urls() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

# as_node N CMD...: CMD as the rabbitmq user with node N's environment.
as_node() {
  local n=$1 d=$BASE/c$1; shift
  (cd /var/lib/rabbitmq && ulimit -n 16384 && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" RABBITMQ_PID_FILE="$d/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$@")
}
ctl() { local n=$1; shift; as_node "$n" timeout 60 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(node_name "$n")" -q "$@"; }

api_ok() { curl -fsS -m 5 -u guest:guest "http://127.0.0.1:$(api_port "$1")/api/overview" >/dev/null 2>&1; }
node_pid() {
  local f=$BASE/c$1/pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  echo "$pid"
}

prepare() {
  local n=$1 d=$BASE/c$1
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
# written by backstop scripts/services/rabbitmq-cluster.sh (node $(node_name "$n"))
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(api_port "$n")
loopback_users.guest = true
cluster_partition_handling = pause_minority
EOF
  echo '[].' >"$d/advanced.config"
  echo '[rabbitmq_management].' >"$d/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$BASE"
}

launch() {
  local n=$1
  if node_pid "$n" >/dev/null; then return 0; fi
  rm -f "$BASE/c$n/pid"
  as_node "$n" /usr/lib/rabbitmq/bin/rabbitmq-server -detached
}

# wait_node N: the node runs the app and answers AMQP and the management API.
wait_node() {
  local n=$1
  wait_until "$TIMEOUT" "node $(node_name "$n") to boot" ctl "$n" await_startup ||
    { tail -n 30 "$BASE/c$n"/log/*.log >&2 2>/dev/null || true; return 1; }
  wait_until 60 "AMQP on 127.0.0.1:$(amqp_port "$n")" tcp_open "$(amqp_port "$n")" || return 1
  wait_until 60 "management API on 127.0.0.1:$(api_port "$n")" api_ok "$n" || return 1
}

running_nodes() { ctl 1 eval 'length(rabbit_nodes:all_running()).' 2>/dev/null; }
three_running() { [[ $(running_nodes) == 3 ]]; }

start() {
  if status >/dev/null 2>&1; then
    say "already running"
    urls
    return 0
  fi
  local t0=$SECONDS n
  apt_install rabbitmq-server curl
  if ! tcp_open 4369; then epmd -address 127.0.0.1 -daemon; fi
  for n in "${NODES[@]}"; do
    if tcp_open "$(amqp_port "$n")" && ! node_pid "$n" >/dev/null; then
      die "port $(amqp_port "$n") is taken by something this script did not start"
    fi
  done
  for n in "${NODES[@]}"; do
    node_pid "$n" >/dev/null || { rm -rf "${BASE:?}/c$n"; prepare "$n"; }
  done
  say "starting nodes ${NODES[*]} (data under $BASE)"
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do wait_node "$n" || die "node $n did not come up"; done
  for n in 2 3; do
    if ! ctl 1 eval "lists:member('$(node_name "$n")', rabbit_nodes:all_running())." | grep -q true; then
      say "joining $(node_name "$n") to $(node_name 1)"
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster "$(node_name 1)" >/dev/null
      ctl "$n" start_app >/dev/null
      wait_node "$n" || die "node $n did not come back after joining"
    fi
  done
  wait_until 60 "3 running cluster members" three_running ||
    die "the cluster does not have 3 running members: $(running_nodes || true)"
  local fd
  for n in "${NODES[@]}"; do
    fd=$(awk '/^Max open files/ {print $4}' "/proc/$(node_pid "$n")/limits")
    ((fd >= 16384)) || die "node $n runs with a file limit of $fd (needs 16384)"
  done
  say "up after $((SECONDS - t0))s: 3 nodes (management http://127.0.0.1:15681/api/ .. 15683)"
  urls
}

stop_node() {
  local n=$1 pid
  pid=$(node_pid "$n") || return 0
  ctl "$n" stop >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 30))
  while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  local n t0=$SECONDS
  # All at once: a clustered node stopping alone waits for its peers.
  for n in "${NODES[@]}"; do stop_node "$n" & done
  wait
  for n in "${NODES[@]}"; do
    wait_until 30 "port $(amqp_port "$n") to close" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$(amqp_port "$n")) 2>/dev/null" || true
  done
  rm -rf "$BASE"
  say "stopped after $((SECONDS - t0))s; data deleted"
}

status() {
  local n rc=0
  for n in "${NODES[@]}"; do
    if node_pid "$n" >/dev/null && api_ok "$n"; then
      say "node $n ($(node_name "$n")) running, AMQP $(amqp_port "$n")"
    else
      say "node $n ($(node_name "$n")) down"
      rc=1
    fi
  done
  return $rc
}

kill_node() {
  local n=$1 pid
  pid=$(node_pid "$n") || die "node $n is not running"
  kill9 "$pid"
  say "killed node $n (pid $pid, kill -9)"
}

restart_node() {
  local n=$1 t0=$SECONDS
  if ! node_pid "$n" >/dev/null; then
    [[ -d $BASE/c$n ]] || die "node $n has no data (start the cluster first)"
    launch "$n"
  fi
  wait_node "$n" || die "node $n did not come back"
  say "node $n back after $((SECONDS - t0))s"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  kill) kill_node "$(cluster_node_arg "${2:-}" kill)" ;;
  restart) restart_node "$(cluster_node_arg "${2:-}" restart)" ;;
  urls) urls ;;
  *) die "usage: $0 start|stop|status|kill N|restart N|urls" ;;
esac
