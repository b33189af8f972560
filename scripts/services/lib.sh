# Shared helpers for scripts/services/*.sh (sourced, not executed).
# Every helper prints through `say`, prefixed with $SVC.

: "${SVC:=services}"
LC_NUMERIC=C # $EPOCHREALTIME with a dot

say() { printf '[%s] %s\n' "$SVC" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$SVC" "$*" >&2; exit 1; }

# wait_until SECONDS DESCRIPTION CMD...: retry CMD every 0.5 s until it
# succeeds; fail (return 1) after SECONDS.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf '[%s] ERROR: timed out after %ss waiting for %s\n' "$SVC" "$limit" "$what" >&2
      return 1
    fi
    sleep 0.5
  done
}

# tcp_open PORT [HOST]: true when something accepts connections there.
tcp_open() {
  local port=$1 host=${2:-127.0.0.1}
  timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# pid_alive PID: the process exists and is not a zombie (on this machine an
# orphan's zombie lingers until pid 1 reaps it, and kill -0 succeeds on it).
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# kill9 PID: kill -9, then wait (at most 30 s) until the process is gone.
kill9() {
  kill -KILL "$1" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while pid_alive "$1" && ((SECONDS < deadline)); do sleep 0.1; done
}

# cluster_node_arg N VERB: N when it names one of a 3-node cluster's nodes.
cluster_node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "usage: $0 $2 N (N in 1..3)"
  echo "$1"
}

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# apt_install PKG...: install the packages that are missing. Runs
# `apt-get update` at most once per process tree (BACKSTOP_APT_UPDATED).
# Package maintainer scripts must not try to start daemons here (no systemd,
# and we start them ourselves bound to 127.0.0.1), so a policy-rc.d that
# answers 101 ("action forbidden") is put in place for the duration of the
# install when the machine has none.
apt_install() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]} (apt)"
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  {
    if [[ ${BACKSTOP_APT_UPDATED:-0} != 1 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      export BACKSTOP_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      --no-install-recommends "${missing[@]}" >/dev/null
  } || rc=$?
  ((created_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# elapsed START: seconds since START (an $EPOCHREALTIME value), one decimal.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# kafka_api_versions_ok HOST PORT: sends a Kafka ApiVersions v0 request
# (correlation id 1) over bash's /dev/tcp and checks the reply carries
# correlation id 1 and error code 0. No JVM, so it is cheap.
kafka_api_versions_ok() {
  local reply
  reply=$(timeout 5 bash -c '
    exec 3<>/dev/tcp/'"$1/$2"' || exit 1
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\xff\xff" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"' 2>/dev/null) || return 1
  [[ ${reply:8:12} == 000000010000 ]]
}
