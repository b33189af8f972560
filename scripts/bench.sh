#!/usr/bin/env bash
# Runs every benchmark and prints their figures: the stack's own cost
# (criterion), the idempotency stores, and each adapter against its raw
# client in the same run.
#
#   scripts/bench.sh            # N = 50,000 messages per adapter run
#   N=200000 scripts/bench.sh
#
# Needs the services (scripts/services/all.sh starts them). Figures on a
# shared 2-core machine vary by run; compare ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/backstop-target}"
export PATH="/usr/sbin:/usr/local/sbin:$PATH"
N="${N:-50000}"
bash scripts/services/all.sh >/dev/null

section() { printf '\n=== %s\n' "$*"; }

section "core: per-message cost and in-memory end to end (criterion)"
cargo bench -q -p backstop --bench stack -- --warm-up-time 1 --measurement-time 5 2>/dev/null \
  | grep -E '^(per_message|end_to_end)|time:|thrpt:' | grep -v '%'

section "idempotency stores (N=$N)"
BACKSTOP_BENCH_N="$N" cargo bench -q -p backstop-tests --bench stores 2>/dev/null

section "RabbitMQ: raw lapin vs backstop (N=$N)"
cargo bench -q -p backstop-rabbitmq --bench throughput -- "$N" 2>/dev/null

section "Kafka: raw rdkafka vs backstop (N=$N)"
BACKSTOP_BENCH_SOURCE_ONLY=1 cargo bench -q -p backstop-kafka --bench throughput -- "$N" 2>/dev/null
