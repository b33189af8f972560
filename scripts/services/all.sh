#!/usr/bin/env bash
# Install (once) and start every service the test suite needs, all bound to
# 127.0.0.1. Idempotent: takes well under a second when everything already runs.
#
#   PostgreSQL  postgres://backstop:backstop@127.0.0.1:5432/backstop
#   Redis       redis://127.0.0.1:6379
#   RabbitMQ    amqp://guest:guest@127.0.0.1:5672/%2f   (API http://127.0.0.1:15672/api)
#   Kafka       127.0.0.1:9092 (KRaft, single node)
#   TLS         separate instances with TLS listeners (scripts/services/tls.sh):
#               amqps :5671 + https API :15671, Kafka SASL_SSL :9094 / SSL :9095,
#               PostgreSQL ssl :5433, Redis TLS :6380 (mutual TLS :6381)
#   Outages     private instances the outage suite stops and starts
#               (scripts/services/outages.sh): RabbitMQ :5684 with a 4 s
#               consumer timeout, Redis :6394, PostgreSQL :5444
#
# Debian packages are installed in one apt-get call (one `apt-get update`);
# Kafka comes from Maven Central into ${BACKSTOP_CACHE:-/var/cache/backstop}.
#
# A broker this script has to start (it was not running) starts on empty
# storage (BACKSTOP_FRESH_STORAGE=1 below): the tests leave their uniquely
# named topics and queues behind, and a broker that reloads thousands of
# them takes minutes to start (a single-node Kafka with 5,555 partition
# folders did not answer within 120 s). A broker that already runs is left
# as it is, and the suites' own stops and restarts keep their storage.
set -euo pipefail

SVC=all
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

t_all=$EPOCHREALTIME
# libssl-dev: librdkafka is built against the system OpenSSL (rdkafka's `ssl`).
# prometheus: its promtool checks and tests the alert rules (tests/tests/dashboards.rs);
# the server it also installs is never started here.
# chromium, chromium-driver: the DLQ console's browser test (cli/tests/console_browser.rs)
# drives headless Chromium through chromedriver.
pkgs=(postgresql redis-server rabbitmq-server curl openssl libssl-dev pkg-config prometheus chromium chromium-driver)
command -v java >/dev/null || pkgs+=(default-jre-headless)
command -v mvn >/dev/null || pkgs+=(maven)
t=$EPOCHREALTIME
missing=()
for p in "${pkgs[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
  say "apt install: $(elapsed "$t")s"
fi

for svc in postgres redis rabbitmq kafka tls outages; do
  t=$EPOCHREALTIME
  if ! BACKSTOP_FRESH_STORAGE=1 "$HERE/$svc.sh" start; then
    die "$svc failed to start (after $(elapsed "$t")s)"
  fi
  say "$svc: $(elapsed "$t")s"
done
say "all services up in $(elapsed "$t_all")s"
