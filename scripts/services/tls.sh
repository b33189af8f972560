#!/usr/bin/env bash
# TLS endpoints for the test suite, as separate instances beside the plain
# services (which stay untouched), all on 127.0.0.1:
#
#   RabbitMQ    amqps://guest:guest@localhost:5671/%2f       (node backstop-tls@localhost)
#               management API https://localhost:15671/api/
#   Kafka       SASL_SSL localhost:9094 (SCRAM-SHA-512/256 and PLAIN, user backstop)
#               SSL      localhost:9095 (client certificate required)
#   PostgreSQL  postgres://backstop:backstop@localhost:5433/backstop?sslmode=verify-full
#   Redis       rediss://localhost:6380 (client certificate optional)
#               rediss://localhost:6381 (client certificate required)
#
# Certificates are made with openssl at set-up, nothing is downloaded, into
# $BACKSTOP_TLS_DIR (default $BACKSTOP_CACHE/tls):
#
#   ca.pem                 the test CA every server certificate is signed by
#   server.pem/.key        CN=localhost, SAN localhost + 127.0.0.1
#   client.pem/.key        CN=backstop-client (extendedKeyUsage clientAuth)
#   expired-client.pem/.key  a client certificate that expired in 2021
#   other-ca.pem           a CA that signed nothing here (the "wrong CA")
#   rotated-client.pem/.key  CN=backstop-client-rotated, signed by ca.pem (a renewed certificate)
#   untrusted-client.pem/.key  a self-signed client certificate no server here accepts
#   expired-server.pem/.key  CN=localhost, signed by ca.pem, expired in 2021 (served by the tests)
#
#   scripts/services/tls.sh [start]   certificates (once), every endpoint, wait
#   scripts/services/tls.sh stop      stop the TLS instances (never the plain ones)
#   scripts/services/tls.sh status    exit 0 when every endpoint answers
#
# Secrets of the test rig (fixed, local only): the Kafka SASL user is
# backstop / backstop-secret.
#
# Environment: BACKSTOP_CACHE (default /var/cache/backstop), BACKSTOP_TLS_DIR,
# TLS_KAFKA_HEAP_OPTS (default -Xmx256m -Xms64m), TLS_START_TIMEOUT (default 120).
set -euo pipefail

SVC=tls
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

CACHE=${BACKSTOP_CACHE:-/var/cache/backstop}
CERTS=${BACKSTOP_TLS_DIR:-$CACHE/tls}
TIMEOUT=${TLS_START_TIMEOUT:-120}
HOST=127.0.0.1

# --- certificates -----------------------------------------------------------

make_certs() {
  [[ -f $CERTS/.complete ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  say "generating a test CA, server and client certificates in $CERTS"
  rm -rf "$CERTS.tmp"
  mkdir -p "$CERTS.tmp"
  (
    cd "$CERTS.tmp"
    q() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; }
    for ca in ca other-ca; do
      q openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -subj "/CN=backstop test $ca" -keyout "$ca.key" -out "$ca.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    done
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
    # PKCS#8 keys (what Kafka's PEM keystore reads)
    q openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
    q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile server.ext -out server.pem
    q openssl req -newkey rsa:2048 -nodes -subj /CN=backstop-client -keyout client.key -out client.csr
    q openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile client.ext -out client.pem
    # An expired client certificate: `openssl ca` is the one openssl 3.0
    # command that takes explicit validity dates.
    q openssl req -newkey rsa:2048 -nodes -subj /CN=backstop-expired -keyout expired-client.key -out expired.csr
    mkdir -p ca-db && : >ca-db/index.txt && echo 1000 >ca-db/serial
    cat >ca.cnf <<EOF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = client_ext
[any]
commonName = supplied
[client_ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
    q openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
      -startdate 20200101000000Z -enddate 20210101000000Z -out expired-client.pem -notext
    # Kafka's PEM keystore: key and chain in one file.
    cat server.key server.pem >server-keystore.pem
    rm -f ./*.csr ./*.ext ca.cnf other-ca.key ca.srl
    rm -rf ca-db
    chmod 644 ./*.pem ./*.key
  ) || die "certificate generation failed"
  touch "$CERTS.tmp/.complete"
  rm -rf "$CERTS"
  mv "$CERTS.tmp" "$CERTS"
}

# Certificates added beside the others (never replacing a file a running
# server has loaded): a renewed client certificate and one no server trusts
# (rotation tests), and an expired server certificate.
make_added_certs() {
  [[ -f $CERTS/rotated-client.pem && -f $CERTS/untrusted-client.pem && -f $CERTS/expired-server.pem ]] && return 0
  (
    cd "$CERTS"
    q() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; }
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >rotated.ext
    q openssl req -newkey rsa:2048 -nodes -subj /CN=backstop-client-rotated -keyout rotated-client.key.tmp -out rotated.csr
    q openssl x509 -req -in rotated.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile rotated.ext -out rotated-client.pem.tmp
    q openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj /CN=backstop-untrusted \
      -addext basicConstraints=CA:FALSE -addext extendedKeyUsage=clientAuth \
      -keyout untrusted-client.key.tmp -out untrusted-client.pem.tmp
    # CN=localhost, valid only in 2020 (`openssl ca` takes explicit dates).
    q openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout expired-server.key.tmp -out expired-server.csr
    rm -rf added-db && mkdir added-db && : >added-db/index.txt && echo 2000 >added-db/serial
    printf '%s\n' '[ca]' 'default_ca = test' '[test]' 'database = added-db/index.txt' \
      'serial = added-db/serial' 'new_certs_dir = added-db' 'default_md = sha256' 'policy = any' \
      'copy_extensions = none' 'x509_extensions = server_ext' '[any]' 'commonName = supplied' \
      '[server_ext]' 'basicConstraints = CA:FALSE' 'keyUsage = digitalSignature,keyEncipherment' \
      'extendedKeyUsage = serverAuth' 'subjectAltName = DNS:localhost,IP:127.0.0.1' >added.cnf
    q openssl ca -batch -config added.cnf -cert ca.pem -keyfile ca.key -in expired-server.csr \
      -startdate 20200101000000Z -enddate 20210101000000Z -out expired-server.pem.tmp -notext
    for f in rotated-client untrusted-client expired-server; do
      mv "$f.key.tmp" "$f.key" && mv "$f.pem.tmp" "$f.pem"
    done
    rm -rf rotated.csr rotated.ext expired-server.csr added.cnf added-db ca.srl
    chmod 644 rotated-client.* untrusted-client.* expired-server.*
  ) || die "added certificate generation failed"
}

# --- Redis ------------------------------------------------------------------

REDIS_PORT=6380
REDIS_DIR=$CACHE/redis-tls

redis_ok() {
  [[ $(timeout 3 redis-cli --tls --cacert "$CERTS/ca.pem" -h localhost -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

# redis_serve PORT DIR AUTH-CLIENTS OK-CHECK LABEL: one TLS-only instance.
redis_serve() {
  local port=$1 dir=$2 auth=$3 ok=$4 label=$5
  if "$ok"; then say "redis: already running (rediss://localhost:$port, $label)"; return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  tcp_open "$port" && die "127.0.0.1:$port is taken but does not answer PING over TLS"
  mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port 0 --tls-port "$port" \
    --tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key" \
    --tls-ca-cert-file "$CERTS/ca.pem" --tls-auth-clients "$auth" \
    --protected-mode yes --dir "$dir" --save '' --appendonly no \
    --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  wait_until "$TIMEOUT" "Redis TLS PONG on :$port" "$ok" ||
    { tail -n 20 "$dir/redis.log" >&2 || true; exit 1; }
  say "redis: up (rediss://localhost:$port, $label)"
}

redis_halt() {
  local dir=$1 pid
  pid=$(cat "$dir/redis.pid" 2>/dev/null) || return 0
  pid_alive "$pid" && kill -TERM "$pid" && wait_until 20 "redis in $dir to stop" bash -c "! kill -0 $pid"
  rm -f "$dir/redis.pid"
}

redis_start() { redis_serve "$REDIS_PORT" "$REDIS_DIR" optional redis_ok "client certificate optional"; }
redis_stop() { redis_halt "$REDIS_DIR"; }

# A second instance that requires a client certificate (mutual TLS).
REDIS_MTLS_PORT=6381
REDIS_MTLS_DIR=$CACHE/redis-mtls

redis_mtls_ok() {
  [[ $(timeout 3 redis-cli --tls --cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client.key" \
    -h localhost -p "$REDIS_MTLS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_mtls_start() { redis_serve "$REDIS_MTLS_PORT" "$REDIS_MTLS_DIR" yes redis_mtls_ok "client certificate required"; }
redis_mtls_stop() { redis_halt "$REDIS_MTLS_DIR"; }

# --- PostgreSQL -------------------------------------------------------------

PG_PORT=5433
PG_DATA=/var/lib/postgresql/backstop-tls
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

pg_ok() {
  [[ $(PGPASSWORD=backstop PGCONNECT_TIMEOUT=3 PGSSLMODE=verify-full PGSSLROOTCERT="$CERTS/ca.pem" \
    psql -h localhost -p "$PG_PORT" -U backstop -d backstop -XtAc 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' 2>/dev/null) == t ]]
}

pg_start() {
  if pg_ok; then say "postgres: already running (localhost:$PG_PORT, ssl)"; return 0; fi
  [[ -n $(pg_bin) ]] || apt_install postgresql
  local bin
  bin=$(pg_bin)
  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    say "postgres: initdb $PG_DATA"
    install -d -o postgres -g postgres -m 700 "$PG_DATA"
    printf 'backstop\n' >/tmp/backstop-tls-pgpw && chmod 644 /tmp/backstop-tls-pgpw
    as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      >/tmp/backstop-tls-initdb.log 2>&1 || { cat /tmp/backstop-tls-initdb.log >&2; die "initdb failed"; }
  fi
  install -o postgres -g postgres -m 600 "$CERTS/server.key" "$PG_DATA/server.key"
  install -o postgres -g postgres -m 644 "$CERTS/server.pem" "$PG_DATA/server.crt"
  install -o postgres -g postgres -m 644 "$CERTS/ca.pem" "$PG_DATA/root.crt"
  cat >"$PG_DATA/postgresql.auto.conf" <<EOF
# written by backstop scripts/services/tls.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
EOF
  cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# written by backstop scripts/services/tls.sh: TLS only over TCP
local   all all                 trust
hostssl all all 127.0.0.1/32    scram-sha-256
EOF
  chown postgres:postgres "$PG_DATA/postgresql.auto.conf" "$PG_DATA/pg_hba.conf"
  if ! as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t "$TIMEOUT" start >/dev/null ||
      { tail -n 20 "$PG_DATA/server.log" >&2 || true; die "postgres (tls) failed to start"; }
  else
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" reload >/dev/null
  fi
  local psql=(as_postgres psql -h "$PG_DATA" -p "$PG_PORT" -U postgres -X -v ON_ERROR_STOP=1 -tAq)
  wait_until 30 "postgres (tls) socket" "${psql[@]}" -c 'select 1' || die "postgres (tls) not answering"
  if [[ -z $("${psql[@]}" -c "select 1 from pg_roles where rolname = 'backstop'") ]]; then
    "${psql[@]}" -c "create role backstop login createdb password 'backstop'"
  fi
  if [[ -z $("${psql[@]}" -c "select 1 from pg_database where datname = 'backstop'") ]]; then
    "${psql[@]}" -c "create database backstop owner backstop"
  fi
  wait_until 30 "postgres TLS login on :$PG_PORT" pg_ok || die "cannot log in over TLS on :$PG_PORT"
  say "postgres: up (localhost:$PG_PORT, ssl)"
}

pg_stop() {
  local bin
  bin=$(pg_bin)
  [[ -n $bin && -f $PG_DATA/PG_VERSION ]] || return 0
  as_postgres "$bin/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
}

# --- RabbitMQ ---------------------------------------------------------------

RABBIT_NODE=backstop-tls@localhost
RABBIT_BASE=$CACHE/rabbitmq-tls
RABBIT_PORT=5671
RABBIT_API_PORT=15671
export ERL_EPMD_ADDRESS=127.0.0.1

rabbit_env() {
  export RABBITMQ_NODENAME=$RABBIT_NODE
  export RABBITMQ_CONF_ENV_FILE=$RABBIT_BASE/rabbitmq-env.conf
  export RABBITMQ_CONFIG_FILE=$RABBIT_BASE/rabbitmq.conf
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_BASE/enabled_plugins
  export RABBITMQ_MNESIA_BASE=$RABBIT_BASE/mnesia
  export RABBITMQ_LOG_BASE=$RABBIT_BASE/log
  export RABBITMQ_PID_FILE=$RABBIT_BASE/rabbit.pid
  export RABBITMQ_DIST_PORT=25673
  export RABBITMQ_NODE_PORT=5674
  export RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_BASE/advanced.config
  # An Erlang cookie of its own (HOME is where the node and its CLI tools
  # look), independent of the plain node's.
  mkdir -p "$RABBIT_BASE"
  if [[ ! -s $RABBIT_BASE/.erlang.cookie ]]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RABBIT_BASE/.erlang.cookie")
  fi
  chmod 400 "$RABBIT_BASE/.erlang.cookie"
  export HOME=$RABBIT_BASE
}

rabbit_api_ok() {
  curl -fsS -m 5 --cacert "$CERTS/ca.pem" -u guest:guest "https://localhost:$RABBIT_API_PORT/api/overview" >/dev/null 2>&1
}

rabbit_start() {
  if rabbit_api_ok && tcp_open "$RABBIT_PORT"; then
    say "rabbitmq: already running (amqps://localhost:$RABBIT_PORT, https://localhost:$RABBIT_API_PORT/api)"
    return 0
  fi
  command -v /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null || apt_install rabbitmq-server curl
  (rabbit_start_node)
  wait_until "$TIMEOUT" "RabbitMQ TLS node (https://localhost:$RABBIT_API_PORT)" rabbit_api_ok ||
    { tail -n 30 "$RABBIT_BASE"/log/*.log >&2 2>/dev/null || true; exit 1; }
  wait_until 10 "AMQPS listener :$RABBIT_PORT" tcp_open "$RABBIT_PORT" || exit 1
  say "rabbitmq: up (amqps://localhost:$RABBIT_PORT, https://localhost:$RABBIT_API_PORT/api)"
}

# In a subshell: the node's environment (HOME included) stays out of the rest.
rabbit_start_node() {
  rabbit_env
  mkdir -p "$RABBIT_BASE/mnesia" "$RABBIT_BASE/log"
  cat >"$RABBIT_BASE/rabbitmq-env.conf" <<'EOF'
# written by backstop scripts/services/tls.sh (the TLS test node)
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  # No plain AMQP listener; peers are verified when they present a
  # certificate (mutual TLS), and may also connect without one.
  cat >"$RABBIT_BASE/rabbitmq.conf" <<EOF
# written by backstop scripts/services/tls.sh (test broker, loopback only)
listeners.tcp = none
listeners.ssl.default = $HOST:$RABBIT_PORT
ssl_options.cacertfile = $CERTS/ca.pem
ssl_options.certfile = $CERTS/server.pem
ssl_options.keyfile = $CERTS/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = $HOST
management.tcp.port = 15673
management.ssl.ip = $HOST
management.ssl.port = $RABBIT_API_PORT
management.ssl.cacertfile = $CERTS/ca.pem
management.ssl.certfile = $CERTS/server.pem
management.ssl.keyfile = $CERTS/server.key
loopback_users.guest = true
EOF
  echo '[].' >"$RABBIT_BASE/advanced.config"
  echo '[rabbitmq_management].' >"$RABBIT_BASE/enabled_plugins"
  if ! timeout 30 /usr/lib/rabbitmq/bin/rabbitmq-diagnostics -n "$RABBIT_NODE" -q ping >/dev/null 2>&1; then
    tcp_open 4369 || epmd -address 127.0.0.1 -daemon
    say "rabbitmq: starting node $RABBIT_NODE"
    (cd "$RABBIT_BASE" && setsid /usr/lib/rabbitmq/bin/rabbitmq-server -detached) >>"$RABBIT_BASE/log/startup.log" 2>&1
  fi
}

rabbit_stop() {
  (
    rabbit_env
    timeout 60 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" -q stop >/dev/null 2>&1 || true
  )
}

# --- Kafka ------------------------------------------------------------------

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
KAFKA_DIR=$CACHE/kafka-tls
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_PIDFILE=$KAFKA_DIR/kafka.pid
KAFKA_INTERNAL=9097
KAFKA_HEAP=${TLS_KAFKA_HEAP_OPTS:--Xmx256m -Xms64m}

# ApiVersions over the broker-internal plaintext listener (as kafka.sh does).
kafka_ok() {
  local reply
  reply=$(timeout 5 bash -c '
    exec 3<>/dev/tcp/'"$HOST/$KAFKA_INTERNAL"' || exit 1
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"' 2>/dev/null) || return 1
  [[ ${reply:8:12} == 000000010000 ]] && tcp_open 9094 && tcp_open 9095
}

kafka_start() {
  if kafka_ok; then say "kafka: already running (SASL_SSL :9094, SSL :9095)"; return 0; fi
  [[ -f $KAFKA_LIBS/.complete ]] || "$HERE/kafka.sh" resolve
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  cat >"$KAFKA_CONF" <<EOF
# generated by backstop scripts/services/tls.sh: single-node KRaft with TLS listeners
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:9096
listeners=SASL_SSL://$HOST:9094,SSL://$HOST:9095,CONTROLLER://$HOST:9096,INTERNAL://$HOST:$KAFKA_INTERNAL
advertised.listeners=SASL_SSL://localhost:9094,SSL://localhost:9095,INTERNAL://$HOST:$KAFKA_INTERNAL
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_backstop="backstop-secret";
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$CERTS/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
log.dirs=$KAFKA_DIR/data
metadata.log.dir=$KAFKA_DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.recovery.threads.per.data.dir=1
num.network.threads=2
num.io.threads=2
log.retention.hours=24
log.segment.bytes=16777216
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_DIR/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
EOF
  local java_tools=(java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties")
  local pid
  pid=$(cat "$KAFKA_PIDFILE" 2>/dev/null || true)
  if [[ ${BACKSTOP_FRESH_STORAGE:-0} == 1 ]] && { [[ -z $pid ]] || ! pid_alive "$pid"; }; then
    # Not running: start on empty storage (formatted again below, SCRAM user included).
    rm -rf "$KAFKA_DIR/data"
    mkdir -p "$KAFKA_DIR/data"
  fi
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    say "kafka: formatting storage with the SCRAM user backstop"
    "${java_tools[@]}" kafka.tools.StorageTool format -t "$("${java_tools[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)" \
      -c "$KAFKA_CONF" --ignore-formatted \
      --add-scram 'SCRAM-SHA-512=[name=backstop,password=backstop-secret]' \
      --add-scram 'SCRAM-SHA-256=[name=backstop,password=backstop-secret]' \
      >"$KAFKA_DIR/logs/format.out" 2>&1 || { cat "$KAFKA_DIR/logs/format.out" >&2; die "kafka (tls) storage format failed"; }
  fi
  if [[ -z $pid ]] || ! pid_alive "$pid"; then
    for p in 9094 9095 9096 "$KAFKA_INTERNAL"; do tcp_open "$p" && die "port $p is taken by something else"; done
    say "kafka: starting the TLS broker (log: $KAFKA_DIR/logs/server.log)"
    # shellcheck disable=SC2086
    setsid nohup java $KAFKA_HEAP -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF" >>"$KAFKA_DIR/logs/kafka.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$KAFKA_PIDFILE"
  fi
  local deadline=$((SECONDS + TIMEOUT))
  while ! kafka_ok; do
    pid_alive "$pid" || { tail -n 30 "$KAFKA_DIR/logs/server.log" "$KAFKA_DIR/logs/kafka.out" >&2 2>/dev/null || true; die "kafka (tls) exited during startup"; }
    ((SECONDS < deadline)) || die "kafka (tls) did not come up within ${TIMEOUT}s"
    sleep 0.5
  done
  say "kafka: up (SASL_SSL localhost:9094, SSL localhost:9095)"
}

kafka_stop() {
  local pid
  pid=$(cat "$KAFKA_PIDFILE" 2>/dev/null) || return 0
  if pid_alive "$pid"; then
    kill -TERM "$pid"
    wait_until 60 "kafka (tls) to stop" bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$KAFKA_PIDFILE"
}

# --- lifecycle --------------------------------------------------------------

start() {
  local t
  make_certs
  make_added_certs
  for part in redis redis_mtls pg rabbit kafka; do
    t=$EPOCHREALTIME
    "${part}_start"
    say "$part: $(elapsed "$t")s"
  done
}

status() {
  local ok=0
  redis_ok || { say "redis (tls) not answering"; ok=1; }
  redis_mtls_ok || { say "redis (mutual tls) not answering"; ok=1; }
  pg_ok || { say "postgres (tls) not answering"; ok=1; }
  rabbit_api_ok || { say "rabbitmq (tls) not answering"; ok=1; }
  kafka_ok || { say "kafka (tls) not answering"; ok=1; }
  ((ok == 0)) && say "every TLS endpoint answers"
  return $ok
}

case ${1:-start} in
  start) start ;;
  stop) kafka_stop; rabbit_stop; pg_stop; redis_mtls_stop; redis_stop; say "stopped" ;;
  status) status ;;
  certs) make_certs && make_added_certs ;;
  *) die "usage: $0 [start|stop|status|certs]" ;;
esac
