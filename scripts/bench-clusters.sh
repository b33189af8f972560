#!/usr/bin/env bash
# Scale-out benchmark (not run by CI): orders a second with 1, 2 and 3
# order-worker processes on a quorum queue of the 3-node RabbitMQ cluster,
# then on a 6-partition topic of the 3-node Kafka cluster
# (tests/benches/scale_out.rs). Starts each cluster, runs, stops it (one at
# a time). Needs PostgreSQL (scripts/services/postgres.sh).
#
#   scripts/bench-clusters.sh            # 5,000 orders per run
#   N=20000 scripts/bench-clusters.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/backstop-target}"
export BACKSTOP_BENCH_N="${N:-5000}"
for broker in rabbitmq kafka; do
  bash "scripts/services/$broker-cluster.sh" start >/dev/null
  rc=0
  BACKSTOP_BENCH_BROKER=$broker cargo bench -q -p backstop-tests --bench scale_out || rc=$?
  bash "scripts/services/$broker-cluster.sh" stop >/dev/null
  ((rc == 0)) || exit "$rc"
done
