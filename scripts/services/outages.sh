#!/usr/bin/env bash
# Private instances for the outage suite (tests/tests/outages.rs), which
# stops and starts them and needs a broker with a short consumer timeout;
# the shared services stay untouched.
#
#   RabbitMQ  amqp://guest:guest@127.0.0.1:5684/%2f, node rabbit-outages@localhost,
#             consumer_timeout 4 s checked every second (channel_tick_interval)
#   Redis     redis://127.0.0.1:6394 (no persistence)
#   PostgreSQL postgres://backstop:backstop@127.0.0.1:5444/backstop (own cluster)
#
#   scripts/services/outages.sh [start]        start all three (idempotent, fast when up)
#   scripts/services/outages.sh redis-stop|redis-start
#   scripts/services/outages.sh postgres-stop|postgres-start
#   scripts/services/outages.sh stop           stop all three
#
# Data lives under ${BACKSTOP_OUTAGES_DIR:-/var/tmp/backstop-outages}.
# Needs the Debian packages all.sh installs (rabbitmq-server, redis-server, postgresql).
set -euo pipefail

SVC=outages
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=${BACKSTOP_OUTAGES_DIR:-/var/tmp/backstop-outages}
AMQP_PORT=5684
DIST_PORT=25684
REDIS_PORT=6394
PG_PORT=5444
NODE=rabbit-outages@localhost
export ERL_EPMD_ADDRESS=127.0.0.1

# The node runs as the rabbitmq user (whose HOME holds the Erlang cookie),
# with its own name, ports, data, logs and configuration.
as_rabbit() {
  local b=$BASE/rabbitmq
  (cd /var/lib/rabbitmq && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT \
    RABBITMQ_MNESIA_BASE=$b/mnesia RABBITMQ_LOG_BASE=$b/log \
    RABBITMQ_CONFIG_FILE=$b/rabbitmq.conf RABBITMQ_ADVANCED_CONFIG_FILE=$b/advanced.config \
    RABBITMQ_ENABLED_PLUGINS_FILE=$b/enabled_plugins RABBITMQ_PID_FILE=$b/pid \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$@")
}

rabbit_start() {
  if tcp_open $AMQP_PORT; then return 0; fi
  # A fresh node each start: the queues of earlier runs are of no use.
  rm -rf "$BASE/rabbitmq/mnesia"
  mkdir -p "$BASE/rabbitmq/mnesia" "$BASE/rabbitmq/log"
  cat >"$BASE/rabbitmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
  # consumer_timeout is checked on the channel tick (60 s by default on 3.x).
  cat >"$BASE/rabbitmq/advanced.config" <<'EOF'
[{rabbit, [{consumer_timeout, 4000}, {channel_tick_interval, 1000}]}].
EOF
  echo '[].' >"$BASE/rabbitmq/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$BASE/rabbitmq"
  if ! tcp_open 4369; then epmd -address 127.0.0.1 -daemon; fi
  say "starting RabbitMQ node $NODE on 127.0.0.1:$AMQP_PORT"
  as_rabbit /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  wait_until 120 "RabbitMQ $NODE on :$AMQP_PORT" tcp_open $AMQP_PORT ||
    { tail -n 30 "$BASE"/rabbitmq/log/*.log >&2 2>/dev/null || true; exit 1; }
}

rabbit_stop() {
  tcp_open $AMQP_PORT || return 0
  as_rabbit /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" -q stop >/dev/null 2>&1 || true
}

redis_start() {
  if tcp_open $REDIS_PORT; then return 0; fi
  mkdir -p "$BASE/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save '' --appendonly no \
    --dir "$BASE/redis" --pidfile "$BASE/redis/pid" --logfile "$BASE/redis/log" >/dev/null
  wait_until 20 "Redis on :$REDIS_PORT" tcp_open $REDIS_PORT
}

redis_stop() {
  redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true
  wait_until 20 "Redis on :$REDIS_PORT to stop" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT) 2>/dev/null"
}

pg_bin() {
  local v
  v=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | cut -d/ -f5 | sort -V | tail -n 1)
  [[ -n $v ]] || die "no PostgreSQL server found under /usr/lib/postgresql"
  echo "/usr/lib/postgresql/$v/bin"
}

as_postgres() { runuser -u postgres -- "$@"; }

pg_start() {
  if tcp_open $PG_PORT; then return 0; fi
  local bin data=$BASE/pg
  bin=$(pg_bin)
  # A server of this folder left running on another port: stop it first.
  as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1 && pg_stop
  if [[ ! -f $data/PG_VERSION ]]; then
    mkdir -p "$data"
    chown postgres:postgres "$data"
    local pw
    pw=$(mktemp)
    echo backstop >"$pw"
    chown postgres "$pw"
    as_postgres "$bin/initdb" -D "$data" -U backstop --pwfile="$pw" -A scram-sha-256 >/dev/null
    rm -f "$pw"
  fi
  as_postgres "$bin/pg_ctl" -D "$data" -l "$data/log" -w -t 60 \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  if ! PGPASSWORD=backstop psql -h 127.0.0.1 -p $PG_PORT -U backstop -d postgres -tAc \
    "select 1 from pg_database where datname = 'backstop'" | grep -q 1; then
    PGPASSWORD=backstop psql -h 127.0.0.1 -p $PG_PORT -U backstop -d postgres -qc "create database backstop"
  fi
}

pg_stop() {
  [[ -f $BASE/pg/postmaster.pid ]] || return 0
  as_postgres "$(pg_bin)/pg_ctl" -D "$BASE/pg" -m fast -w stop >/dev/null 2>&1 || true
}

case ${1:-start} in
  start) redis_start & r=$!; pg_start & p=$!; rabbit_start; wait $r; wait $p; say "up" ;;
  stop) redis_stop; pg_stop; rabbit_stop ;;
  redis-stop) redis_stop ;;
  redis-start) redis_start ;;
  postgres-stop) pg_stop ;;
  postgres-start) pg_start ;;
  *) die "usage: $0 [start|stop|redis-stop|redis-start|postgres-stop|postgres-start]" ;;
esac
