#!/usr/bin/env bash
# PostgreSQL (Debian's postgresql) on 127.0.0.1:5432 with
#   postgres://backstop:backstop@127.0.0.1:5432/backstop
# (role backstop, LOGIN CREATEDB, password auth over TCP; database backstop
# owned by it).
#
#   scripts/services/postgres.sh [start]   install (once), create cluster (once), start, wait
#   scripts/services/postgres.sh stop      pg_ctlcluster ... stop -m fast
#   scripts/services/postgres.sh restart   stop then start
#   scripts/services/postgres.sh status    exit 0 when backstop can log in
#
# Environment: POSTGRES_START_TIMEOUT (seconds, default 60).
set -euo pipefail

SVC=postgres
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=5432
TIMEOUT=${POSTGRES_START_TIMEOUT:-60}
CLUSTER=main
URL=postgres://backstop:backstop@127.0.0.1:$PORT/backstop

login_ok() {
  command -v psql >/dev/null &&
    [[ $(PGPASSWORD=backstop PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$PORT" -U backstop -d backstop \
      -XtAc 'select 1' 2>/dev/null) == 1 ]]
}
ready() { pg_isready -q -h 127.0.0.1 -p "$PORT"; }
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
psql_admin() { as_postgres psql -p "$PORT" -X -v ON_ERROR_STOP=1 -tA "$@"; }

# Highest PostgreSQL major version that has a cluster, else the highest
# installed server; creates the cluster when there is none.
pick_version() {
  local v
  v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $v || ! -f /etc/postgresql/$v/$CLUSTER/postgresql.conf ]]; then
    v=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | cut -d/ -f5 | sort -V | tail -n 1)
    [[ -n $v ]] || die "no PostgreSQL server found under /usr/lib/postgresql"
    if [[ ! -f /etc/postgresql/$v/$CLUSTER/postgresql.conf ]]; then
      say "creating cluster $v/$CLUSTER" >&2
      pg_createcluster "$v" "$CLUSTER" -p "$PORT" >/dev/null
    fi
  fi
  echo "$v"
}

configure() {
  local v=$1 etc=/etc/postgresql/$1/$CLUSTER
  mkdir -p "$etc/conf.d"
  local want
  want=$(printf "# written by backstop scripts/services/postgres.sh\nlisten_addresses = '127.0.0.1'\nport = %s\n" "$PORT")
  if [[ $(cat "$etc/conf.d/backstop.conf" 2>/dev/null) != "$want" ]]; then
    printf '%s\n' "$want" >"$etc/conf.d/backstop.conf"
    say "wrote $etc/conf.d/backstop.conf"
  fi
  grep -q "^include_dir = 'conf.d'" "$etc/postgresql.conf" ||
    echo "include_dir = 'conf.d'" >>"$etc/postgresql.conf"
  # Debian's default pg_hba already has `host all all 127.0.0.1/32 scram-sha-256`.
  if ! grep -Eq '^host\s+all\s+all\s+127\.0\.0\.1/32\s+(scram-sha-256|md5)' "$etc/pg_hba.conf"; then
    echo "host all all 127.0.0.1/32 scram-sha-256" >>"$etc/pg_hba.conf"
    say "added a password rule for 127.0.0.1 to pg_hba.conf"
  fi
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
}

ensure_role_and_db() {
  if [[ -z $(psql_admin -c "select 1 from pg_roles where rolname = 'backstop'") ]]; then
    say "creating role backstop"
    psql_admin -qc "create role backstop login createdb password 'backstop'"
  else
    psql_admin -qc "alter role backstop login createdb password 'backstop'"
  fi
  if [[ -z $(psql_admin -c "select 1 from pg_database where datname = 'backstop'") ]]; then
    say "creating database backstop"
    psql_admin -qc "create database backstop owner backstop"
  fi
}

start() {
  if login_ok; then
    say "already running ($URL)"
    return 0
  fi
  apt_install postgresql
  local v t0=$SECONDS
  v=$(pick_version)
  configure "$v"
  # Retry loop: right after a crash the old postmaster may still hold its
  # lock files for a moment (pg_ctl then refuses to start), and a cluster
  # that "runs" but does not answer may still be in crash recovery.
  local deadline=$((SECONDS + TIMEOUT)) waited_since=$SECONDS restarted=0 log=/var/log/postgresql/postgresql-$v-$CLUSTER.log
  while ! ready; do
    if pg_ctlcluster "$v" "$CLUSTER" status >/dev/null 2>&1; then
      if ((!restarted && SECONDS - waited_since >= 15)); then
        say "cluster $v/$CLUSTER runs but does not answer on 127.0.0.1:$PORT; restarting it"
        pg_ctlcluster "$v" "$CLUSTER" restart -m fast || true
        restarted=1
      fi
    else
      say "starting cluster $v/$CLUSTER"
      if ! pg_ctlcluster "$v" "$CLUSTER" start 2>/tmp/backstop-pg-start.err; then
        say "start attempt failed ($(grep -m1 -o 'FATAL.*' /tmp/backstop-pg-start.err || tail -n 1 /tmp/backstop-pg-start.err)); retrying"
      fi
      waited_since=$SECONDS
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$log" >&2 || true
      die "not ready on 127.0.0.1:$PORT within ${TIMEOUT}s"
    fi
    ready || sleep 1
  done
  ensure_role_and_db
  login_ok || die "cannot log in as $URL"
  say "up after $((SECONDS - t0))s ($URL)"
}

stop() {
  local v
  v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $v ]] || ! pg_ctlcluster "$v" "$CLUSTER" status >/dev/null 2>&1; then
    say "not running"
    return 0
  fi
  say "stopping cluster $v/$CLUSTER"
  pg_ctlcluster "$v" "$CLUSTER" stop -m fast
  say "stopped"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if login_ok; then say "running ($URL)"; else say "not answering"; exit 1; fi ;;
  *) die "usage: $0 [start|stop|restart|status]" ;;
esac
