#!/usr/bin/env bash
# Refreshes the README's screenshots of the DLQ console (docs/console/*.png)
# from the browser test, which writes them under the target folder on every
# run (CI never changes the tree; this script is run by hand, then the
# images are committed).
#
#   scripts/console-screenshots.sh
#
# Needs the services (scripts/services/all.sh: RabbitMQ, and chromium with
# chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/backstop-target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test -p backstop-cli --test console_browser
shots="$CARGO_TARGET_DIR/tmp/console-screenshots"
mkdir -p docs/console
for name in overview dlq-filtered letter dry-run redrive dlq-after; do
  cp "$shots/$name.png" "docs/console/$name.png"
done
echo "updated docs/console/*.png from $shots"
