#!/usr/bin/env bash
# Services for the integration and browser tests: PostgreSQL (MLflow backend) and chromium.
#
#   source .ci/services.sh        # install if missing, start PostgreSQL, export the test env
#   bash .ci/services.sh stop     # stop the PostgreSQL cluster started here
#
# Idempotent and fast when already done: packages are installed only when missing, and a cluster
# that is already running (recorded in $FETAL_SERVICES_DIR) is reused. The secured services (MLflow
# basic-auth, Prefect auth string, Dask mutual TLS, fetal serve) need nothing from apt: the tests
# start them with `make services`' own commands on free loopback ports (Flask-WTF and cryptography
# come from uv.lock). Exports:
#   FETAL_TEST_POSTGRES_URI  postgresql://postgres@127.0.0.1:PORT/postgres (trust auth, loopback)
#   FETAL_TEST_CHROMIUM      path of the chromium binary Playwright drives
#   FETAL_SERVICES_DIR       where the cluster lives (data, socket, log, port)

_fetal_services_main() {
  local dir="${FETAL_SERVICES_DIR:-/tmp/fetal-services}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"

  if [ "${1:-}" = "stop" ]; then
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -f "$dir/pg/data/postmaster.pid" ]; then
      if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop
      else
        "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop
      fi
    fi
    return 0
  fi

  # ---- packages (apt), only when missing
  local missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "services: apt-get install ${missing[*]}"
    $sudo apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || return 1
  fi
  export FETAL_TEST_CHROMIUM
  FETAL_TEST_CHROMIUM="$(command -v chromium)"

  # ---- PostgreSQL: a throwaway cluster on a free loopback port
  local bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  local run=()
  [ "$(id -u)" -eq 0 ] && run=(runuser -u postgres --)   # initdb refuses to run as root
  if [ -f "$dir/pg/port" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$dir/pg/port")"; then
    port=$(cat "$dir/pg/port")
  else
    rm -rf "$dir/pg" && mkdir -p "$dir/pg"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir/pg"
    "${run[@]}" "$bin/initdb" -D "$dir/pg/data" -A trust -U postgres >"$dir/pg/initdb.log" \
      || { cat "$dir/pg/initdb.log"; return 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${run[@]}" "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
      -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
      || { cat "$dir/pg/server.log"; return 1; }
    echo "$port" >"$dir/pg/port"
  fi
  export FETAL_SERVICES_DIR="$dir"
  export FETAL_TEST_POSTGRES_URI="postgresql://postgres@127.0.0.1:${port}/postgres"
  echo "services: PostgreSQL on 127.0.0.1:${port}, chromium at ${FETAL_TEST_CHROMIUM}"
}

_fetal_services_main "$@"
_fetal_services_rc=$?
# Sourced: hand the status back without exiting the caller's shell; run: exit with it.
(return 0 2>/dev/null) && return "$_fetal_services_rc" || exit "$_fetal_services_rc"
