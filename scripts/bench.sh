#!/usr/bin/env bash
# Runs every benchmark and prints their figures: the stack's own cost
# (criterion, and instruction/allocation counts under callgrind), the
# idempotency stores, and each adapter against its raw
# client in the same run; then one summary table (Markdown) of them all.
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

# Besides their own output, the benches print machine-readable lines
#   BENCH-ROW <bench> <raw/s> <backstop/s> <raw p50 µs> <raw p99 µs> <backstop p50 µs> <backstop p99 µs>
# (tab-separated, "-" where there is no raw side). They are kept aside in
# $rows and become the summary table at the end.
rows="$(mktemp -d)"
trap 'rm -rf "$rows"' EXIT
# Shows a bench's output without its BENCH-ROW lines and keeps it in $rows/$1.
collect() { tee "$rows/$1" | { grep --line-buffered -v '^BENCH-ROW' || true; }; }

section "core: per-message cost and in-memory end to end (criterion)"
cargo bench -q -p backstop --bench stack -- --warm-up-time 1 --measurement-time 5 2>/dev/null \
  | grep -E '^(per_message|end_to_end)|time:|thrpt:' | grep -v '%'

section "core: instructions and allocations per message (callgrind, slopes 10k -> 20k)"
if command -v valgrind >/dev/null; then
  cargo bench -q -p backstop --bench instr 2>/dev/null
else
  echo "skipped: install valgrind (apt) for the instruction counts"
fi

section "core: the in-memory runner, bare loop vs one and two drivers (1,000,000 messages, fresh process per run)"
cargo bench -q -p backstop --bench drivers 2>/dev/null | grep -v '^BENCH-DRIVERS'

section "idempotency stores (N=$N)"
BACKSTOP_BENCH_N="$N" cargo bench -q -p backstop-tests --bench stores 2>/dev/null | collect stores

section "RabbitMQ: raw lapin vs backstop (N=$N)"
cargo bench -q -p backstop-rabbitmq --bench throughput -- "$N" 2>/dev/null | collect rabbitmq

section "Kafka: raw rdkafka vs backstop (N=$N)"
BACKSTOP_BENCH_SOURCE_ONLY=1 cargo bench -q -p backstop-kafka --bench throughput -- "$N" 2>/dev/null \
  | collect kafka

section "PostgreSQL: a batch handler vs one insert per message (N=$N)"
BACKSTOP_BENCH_N="$N" cargo bench -q -p backstop-postgres --bench batch 2>/dev/null | collect batch

section "summary (N=$N messages per run, ${SECONDS} s in all)"
echo "Rates: the best run of each side within one bench run; ratio = backstop / raw."
echo "p50 / p99: per-message latency, from the raw client (raw) or the adapter's"
echo "Source (backstop) handing the delivery out to its ack (RabbitMQ, in-memory)"
echo "or offset store (Kafka) having returned; for the stores, one claim + complete."
echo "The queues start full: backstop's figure includes the wait inside its"
echo "in-flight window (prefetch / concurrency; on average at most window / rate),"
echo "as does raw RabbitMQ with acks on tasks; the raw Kafka and in-memory loops"
echo "take one message at a time."
echo
cat "$rows/rabbitmq" "$rows/kafka" "$rows/stores" "$rows/batch" | awk -F'\t' '
  function commas(x,   s, out) {
    s = sprintf("%.0f", x); out = ""
    while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
    return s out
  }
  function rate(x) { return x == "-" ? "—" : commas(x) }
  function us(x) { return x + 0 < 10 ? sprintf("%.1f", x) : commas(x) }
  function latency(p50, p99) { return p50 == "-" ? "—" : us(p50) " / " us(p99) " µs" }
  BEGIN {
    print "| bench | raw client msgs/s | backstop msgs/s | ratio | raw p50 / p99 | backstop p50 / p99 |"
    print "|---|---:|---:|---:|---:|---:|"
  }
  $1 == "BENCH-ROW" {
    ratio = ($3 == "-" || $3 + 0 == 0) ? "—" : sprintf("%.2f", $4 / $3)
    printf "| %s | %s | %s | %s | %s | %s |\n", $2, rate($3), rate($4), ratio, latency($5, $6), latency($7, $8)
  }'
