#!/usr/bin/env bash
# Redis (Debian's redis-server) on redis://127.0.0.1:6379, no persistence.
#
#   scripts/services/redis.sh [start]   install (once), start, wait for PONG
#   scripts/services/redis.sh stop      SHUTDOWN NOSAVE, wait until gone
#   scripts/services/redis.sh restart   stop then start
#   scripts/services/redis.sh status    exit 0 when PING answers PONG
#
# Tests stop/start it mid-run to simulate an outage.
# Environment: REDIS_START_TIMEOUT (seconds, default 30).
set -euo pipefail

SVC=redis
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=6379
TIMEOUT=${REDIS_START_TIMEOUT:-30}
DIR=/var/lib/redis
LOG=/var/log/redis/backstop-redis.log
PIDFILE=/run/redis/backstop-redis.pid

pong() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null) == PONG ]]; }

start() {
  if command -v redis-cli >/dev/null && pong; then
    say "already running on 127.0.0.1:$PORT"
    return 0
  fi
  apt_install redis-server
  if tcp_open "$PORT"; then die "127.0.0.1:$PORT is taken but does not answer PING"; fi
  mkdir -p "$DIR" "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
  local t0=$SECONDS
  say "starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
    --dir "$DIR" --save '' --appendonly no --logfile "$LOG" --pidfile "$PIDFILE" \
    --loglevel notice
  wait_until "$TIMEOUT" "PONG on 127.0.0.1:$PORT" pong || { tail -n 20 "$LOG" >&2 || true; exit 1; }
  say "up on 127.0.0.1:$PORT after $((SECONDS - t0))s"
}

stop() {
  if ! command -v redis-cli >/dev/null || ! pong; then say "not running"; return 0; fi
  say "stopping (SHUTDOWN NOSAVE)"
  timeout 10 redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
  wait_until 30 "port $PORT to close" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null" || exit 1
  say "stopped"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if command -v redis-cli >/dev/null && pong; then say "running"; else say "not answering"; exit 1; fi ;;
  *) die "usage: $0 [start|stop|restart|status]" ;;
esac
