#!/usr/bin/env bash
# The one test entry point: installs and starts every service the tests need,
# then runs the format check, clippy with -D warnings, every test, and a
# short fuzz run (scripts/fuzz.sh).
#
#   scripts/test.sh                  # everything (what CI runs)
#   scripts/test.sh --only faults    # one step (or several: --only fmt,clippy)
#   scripts/test.sh --list           # the step names
#
# Steps: services fmt clippy build test faults clusters fuzz. The services start in the
# background while fmt, clippy and the test build compile, so a cold run pays
# for the slower of the two, not their sum. Each step prints its time, and the
# run ends with a table of them.
#
# CARGO_TARGET_DIR defaults to a folder outside the clone so repeated runs
# reuse one build; fmt, clippy and the tests share it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/backstop-target}"
export PATH="/usr/sbin:/usr/local/sbin:$PATH"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# No incremental artifacts: a test run builds each crate once, and the
# incremental caches of the many test binaries fill a disk over repeated runs
# (a shared target dir reached 73 GB here, and a full disk stalls the brokers).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Tests that restart a broker serialise themselves; four test threads per
# binary keep the 2-core machine responsive.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# The fault suites at full size: 20,000 orders, 5 kill -9 and one broker
# restart per broker (about 2 + 3 minutes). Lower them for a quick local run.
export BACKSTOP_FAULT_ORDERS="${BACKSTOP_FAULT_ORDERS:-20000}"
export BACKSTOP_FAULT_KILLS="${BACKSTOP_FAULT_KILLS:-5}"
# The CLI's scale tests: Kafka walks the 100,000-letter DLQ (about 20 s);
# a RabbitMQ walk costs about 1 ms a letter in a debug build, so CI walks
# 20,000 (the memory bound asserted is the same). Set 100000 for the full
# fixture (about 3 to 4 minutes).
export BACKSTOP_CLI_RABBIT_FIXTURE_LETTERS="${BACKSTOP_CLI_RABBIT_FIXTURE_LETTERS:-20000}"

# The cluster suites (the `clusters` step): orders and worker kills per
# suite, on a 3-node RabbitMQ and a 3-node Kafka started for them one at a
# time and stopped after (339 s measured on 2 cores, including about 2
# minutes of build checks of order-worker and the test binaries).
export BACKSTOP_CLUSTER_ORDERS="${BACKSTOP_CLUSTER_ORDERS:-5000}"
export BACKSTOP_CLUSTER_KILLS="${BACKSTOP_CLUSTER_KILLS:-2}"

ALL_STEPS=(services fmt clippy doc build test faults clusters fuzz)
only=""
while (($#)); do
  case $1 in
    --only) only=${2:?--only needs a step name (see --list)}; shift 2 ;;
    --only=*) only=${1#--only=}; shift ;;
    --list) printf '%s\n' "${ALL_STEPS[@]}"; exit 0 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n $only ]]; then
  IFS=, read -r -a wanted <<<"$only"
  for w in "${wanted[@]}"; do
    [[ " ${ALL_STEPS[*]} " == *" $w "* ]] || { echo "unknown step: $w (one of: ${ALL_STEPS[*]})" >&2; exit 2; }
  done
  # Steps that run tests need the services.
  for w in "${wanted[@]}"; do
    [[ $w == test || $w == faults || $w == clusters ]] && wanted+=(services)
  done
else
  wanted=("${ALL_STEPS[@]}")
fi
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

# Every run's output is also kept in a file (the last 5 runs), and a
# failed run ends with each failing test's panic message, so a failure is
# readable from the end of the output even when the middle is cut.
LOG_DIR="${BACKSTOP_TEST_LOG_DIR:-/var/tmp/backstop-logs}"
LOG="$LOG_DIR/test-$(date -u +%Y%m%dT%H%M%SZ)-$$.log"
if mkdir -p "$LOG_DIR" 2>/dev/null && : >"$LOG"; then
  find "$LOG_DIR" -maxdepth 1 -name 'test-*.log' -print0 | sort -rz | tail -zn +6 | xargs -0r rm -f
  exec 3>&1 4>&2
  exec > >(tee -a "$LOG") 2>&1
  tee_pid=$!
else
  LOG=/dev/null tee_pid=""
fi

start=$SECONDS
times=()
status=0
step_start=0
step() {
  printf '\n==> %s\n' "$*"
  step_start=$SECONDS
}
step_done() {
  local took=$((SECONDS - step_start))
  times+=("$(printf '%-10s %5d s  %s' "$1" "$took" "${2:-ok}")")
  printf '<== %s: %d s\n' "$1" "$took"
}
report() {
  local rc=$?
  if [[ -n $tee_pid ]]; then
    # Back to the original output, and the log complete before it is read.
    exec 1>&3 2>&4
    wait "$tee_pid" 2>/dev/null || true
  fi
  {
    if ((rc != 0)) && grep -qE '^test .* FAILED$' "$LOG" 2>/dev/null; then
      printf '\n==> failures (the whole output: %s)\n' "$LOG"
      # One pass to list the failing tests, a second for each of their
      # panics with the lines of its message (up to the backtrace); panics
      # of tests that passed (a deliberate one, caught) are left out.
      awk 'FNR == NR { if ($0 ~ /^test .* FAILED$/) { name = $2; sub(/.*::/, "", name); failed[name] = 1; print "  " $0 } next }
           /^thread .* panicked at/ { t = $2; gsub(/\047/, "", t); sub(/.*::/, "", t); n = (t in failed) ? 8 : 0 }
           n > 0 && /^stack backtrace:|^note: / { n = 0 }
           n > 0 { print "  " $0; n-- }' "$LOG" "$LOG" | cut -c1-400 | tail -n 80
    fi
    printf '\n==> step times\n'
    printf '  %s\n' "${times[@]}"
    printf '  %-10s %5d s\n' total "$((SECONDS - start))"
    printf '  log        %s\n' "$LOG"
  } | if [[ -n $tee_pid ]]; then tee -a "$LOG"; else cat; fi
  return "$rc"
}
trap report EXIT

# Build prerequisites, before anything compiles (the services install runs
# in parallel with the build): librdkafka links the system OpenSSL
# (rdkafka's `ssl` feature), found through pkg-config. Instant when present.
if want clippy || want build || want test || want faults || want clusters; then
  (SVC=build && . scripts/services/lib.sh && apt_install libssl-dev pkg-config) || exit 1
fi

services_pid=""
services_log=$(mktemp)
if want services; then
  # In the background: apt installs and broker start-ups take about a minute
  # on a fresh machine, and need no CPU-heavy compile.
  printf '\n==> services (in the background, log: %s)\n' "$services_log"
  services_t0=$SECONDS
  bash scripts/services/all.sh >"$services_log" 2>&1 &
  services_pid=$!
fi
wait_services() {
  [[ -n $services_pid ]] || return 0
  step "services (waiting)"
  local rc=0
  wait "$services_pid" || rc=$?
  services_pid=""
  cat "$services_log"
  times+=("$(printf '%-10s %5d s  %s' services "$((SECONDS - services_t0))" "in the background")")
  if ((rc != 0)); then
    echo "services failed to start" >&2
    exit "$rc"
  fi
}

if want fmt; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step_done fmt
fi

if want clippy; then
  step "cargo clippy --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  # TLS is a feature: without the defaults no adapter pulls in a TLS stack,
  # and the rustls adapters still build (Kafka's would rebuild librdkafka).
  for p in backstop-rabbitmq backstop-kafka backstop-redis backstop-postgres; do
    if cargo tree -p "$p" --no-default-features -e normal,build --prefix none |
      grep -E '^(rustls|tokio-rustls|openssl-sys|native-tls|aws-lc-sys) '; then
      echo "$p pulls in a TLS stack with --no-default-features" >&2
      exit 1
    fi
  done
  cargo clippy -p backstop-rabbitmq -p backstop-redis -p backstop-postgres --no-default-features -- -D warnings
  # OpenTelemetry is a feature (`otel`), off by default: lint it on too.
  cargo clippy -p backstop -p backstop-spool -p backstop-cli -p backstop-tests --all-targets \
    --features backstop/otel,backstop-spool/otel,backstop-cli/otel,backstop-tests/otel -- -D warnings
  step_done clippy
fi

if want doc; then
  # The API docs build with every intra-doc link resolved (the lint is
  # denied in the workspace's [lints.rustdoc]); the doc-tests themselves
  # run in the test step.
  step "cargo doc --no-deps (broken links are errors)"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib
  step_done doc
fi

if want build || want test || want faults || want clusters; then
  step "cargo test --no-run (compile every test binary, and the order worker once)"
  cargo test --workspace --no-run
  # The suites run the real order-worker. Built here once, so no test
  # process runs its own `cargo build` (whose feature set differs from the
  # test build's, so alternating the two relinks it every time).
  cargo build -p backstop-examples --bin order-worker
  export BACKSTOP_ORDER_WORKER="$CARGO_TARGET_DIR/debug/order-worker"
  step_done build
fi

wait_services

if want test; then
  step "cargo test (all but the fault and cluster suites)"
  rc=0
  cargo test --workspace --no-fail-fast -- --skip kill9_and_broker_restart --skip parked_keys_ --skip zombie_ --skip on_a_cluster_ || rc=$?
  # Trace propagation (feature `otel`): the core's tests and the trace
  # through both brokers' retry, DLQ and redrive.
  cargo test -p backstop --features otel --lib --test otel --no-fail-fast || rc=$?
  cargo test -p backstop --features otel --doc otel || rc=$?
  cargo test -p backstop-tests --features otel --test otel_trace || rc=$?
  step_done test "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")"
  ((rc == 0)) || status=$rc
fi

if want faults; then
  step "fault suites: $BACKSTOP_FAULT_ORDERS orders, $BACKSTOP_FAULT_KILLS kill -9 and a broker restart per broker; Kafka ordered retries; a Kafka zombie"
  # Its own step with --nocapture, so the counts of each run are in the log.
  rc=0
  cargo test -p backstop-tests --test faults_rabbitmq --test faults_kafka --test zombie_kafka \
    --no-fail-fast -- --nocapture kill9_and_broker_restart parked_keys_ zombie_ || rc=$?
  step_done faults "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")"
  ((rc == 0)) || status=$rc
fi

# run_on_cluster SCRIPT FILTER TEST...: starts the cluster, runs the tests
# named FILTER* of the given test binaries, stops the cluster (also on
# failure). `--workspace` keeps the features of the build step, so nothing
# is rebuilt.
run_on_cluster() {
  local script=$1 filter=$2 rc=0 t args=()
  shift 2
  for t in "$@"; do args+=(--test "$t"); done
  bash "scripts/services/$script" start || { bash "scripts/services/$script" stop; return 1; }
  cargo test --workspace "${args[@]}" --no-fail-fast -- --nocapture "$filter" || rc=$?
  bash "scripts/services/$script" stop || true
  return "$rc"
}

if want clusters; then
  step "cluster suites: $BACKSTOP_CLUSTER_ORDERS orders, $BACKSTOP_CLUSTER_KILLS worker kills and a node loss per cluster"
  # One cluster at a time: the 2-core machine runs the single-node brokers too.
  rc=0
  run_on_cluster rabbitmq-cluster.sh on_a_cluster_rabbitmq clusters_rabbitmq doctor_cluster || rc=$?
  run_on_cluster kafka-cluster.sh on_a_cluster_kafka clusters_kafka doctor_cluster || rc=$?
  step_done clusters "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")"
  ((rc == 0)) || status=$rc
fi

if ((status != 0)); then
  echo "tests failed" >&2
  exit "$status"
fi

if want fuzz; then
  step "fuzz targets: fmt, clippy, replay of the seeds and saved crashes (stable)"
  (
    cd core/fuzz
    cargo fmt -- --check
    cargo clippy --all-targets -- -D warnings
    cargo test
  )
  step_done fuzz-test

  step "fuzz smoke run (${BACKSTOP_FUZZ_SECONDS:-15} s per target, nightly)"
  bash scripts/fuzz.sh "${BACKSTOP_FUZZ_SECONDS:-15}"
  step_done fuzz
fi

printf '\ndone in %d s\n' "$((SECONDS - start))"
