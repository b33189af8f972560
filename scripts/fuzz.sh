#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target in core/fuzz (decode,
# headers) and runs each for SECONDS (default 30), seeded from
# core/fuzz/seeds/<target>.
#
#   scripts/fuzz.sh                        # 30 s per target
#   scripts/fuzz.sh 600                    # a longer hunt
#   FUZZ_SANITIZER=address scripts/fuzz.sh # with ASan (default none, see below)
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Builds
# in CARGO_TARGET_DIR_FUZZ (default /var/tmp/backstop-fuzz-target), apart
# from the workspace's build. The corpus grows across runs in
# $CARGO_TARGET_DIR_FUZZ/corpus/<target>, never in the clone. A crash stops
# the run with exit 1 and prints the input saved under
# core/fuzz/artifacts/<target>/; `cd core/fuzz && cargo test` replays it on
# stable. No sanitizer by default: backstop forbids unsafe code, and ASan
# costs several times the executions per second.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_FUZZ:-/var/tmp/backstop-fuzz-target}"

duration="${1:-30}"
if ! [[ "$duration" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS per target, default 30]" >&2
  exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"

step() { printf '\n==> %s\n' "$*"; }
start=$SECONDS

if ! cargo fuzz --version >/dev/null 2>&1; then
  step "cargo install --locked cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd core
mapfile -t targets < <(cargo +nightly fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "no fuzz targets in core/fuzz" >&2
  exit 1
fi

step "build ${targets[*]} (sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer"

for target in "${targets[@]}"; do
  step "fuzz $target for ${duration}s"
  corpus="$CARGO_TARGET_DIR/corpus/$target"
  log="$CARGO_TARGET_DIR/fuzz-$target.log"
  mkdir -p "$corpus"
  cp fuzz/seeds/"$target"/* "$corpus"/
  args=(-max_total_time="$duration" -print_final_stats=1)
  if [[ -f "fuzz/dict/$target.dict" ]]; then
    args+=(-dict="fuzz/dict/$target.dict")
  fi
  if ! cargo +nightly fuzz run -s "$sanitizer" "$target" "$corpus" -- "${args[@]}" >"$log" 2>&1; then
    tail -n 40 "$log"
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    echo
    echo "FAILED: $target (full log: $log)"
    if [[ -n "$artifact" ]]; then
      echo "artifact: $artifact"
      echo "reproduce: cd core && cargo +nightly fuzz run -s $sanitizer $target $artifact"
      echo "      or:  cd core/fuzz && cargo test   (stable, replays core/fuzz/artifacts)"
    fi
    exit 1
  fi
  stat_of() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
  printf '%s: %s runs, %s exec/s, %s new units, corpus %s files, peak rss %s MB\n' \
    "$target" "$(stat_of number_of_executed_units)" "$(stat_of average_exec_per_sec)" \
    "$(stat_of new_units_added)" "$(find "$corpus" -type f | wc -l)" "$(stat_of peak_rss_mb)"
done

step "no crash in ${targets[*]} (${duration}s each, $((SECONDS - start))s in all)"
