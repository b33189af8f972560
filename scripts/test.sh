#!/usr/bin/env bash
# The one test entry point: installs and starts every service the tests need,
# then runs the format check, clippy with -D warnings, every test, and a
# short fuzz run (scripts/fuzz.sh).
#
#   scripts/test.sh
#
# CARGO_TARGET_DIR defaults to a folder outside the clone so repeated runs
# reuse one build; fmt, clippy and the tests share it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/backstop-target}"
export PATH="/usr/sbin:/usr/local/sbin:$PATH"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# Tests that restart a broker serialise themselves; two test threads per
# binary keep the 2-core machine responsive.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# The fault suites at full size: 20,000 orders, 5 kill -9 and one broker
# restart per broker (about 2 + 3 minutes). Lower them for a quick local run.
export BACKSTOP_FAULT_ORDERS="${BACKSTOP_FAULT_ORDERS:-20000}"
export BACKSTOP_FAULT_KILLS="${BACKSTOP_FAULT_KILLS:-5}"

step() { printf '\n==> %s\n' "$*"; }
start=$SECONDS

step "services"
bash scripts/services/all.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (all but the fault suites)"
status=0
cargo test --workspace --no-fail-fast -- --skip kill9_and_broker_restart || status=$?

step "fault suites: $BACKSTOP_FAULT_ORDERS orders, $BACKSTOP_FAULT_KILLS kill -9 and a broker restart per broker"
# Its own step with --nocapture, so the counts of each run are in the log.
cargo test -p backstop-tests --test faults_rabbitmq --test faults_kafka --no-fail-fast \
  -- --nocapture kill9_and_broker_restart || status=$?
if ((status != 0)); then
  echo "tests failed" >&2
  exit "$status"
fi

step "fuzz targets: fmt, clippy, replay of the seeds and saved crashes (stable)"
(
  cd core/fuzz
  cargo fmt -- --check
  cargo clippy --all-targets -- -D warnings
  cargo test
)

step "fuzz smoke run (${BACKSTOP_FUZZ_SECONDS:-15} s per target, nightly)"
bash scripts/fuzz.sh "${BACKSTOP_FUZZ_SECONDS:-15}"

step "done in $((SECONDS - start)) s"
