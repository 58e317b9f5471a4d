#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store's tests, on a free loopback port.
#
#   eval "$(.ci/postgres.sh start)"   # exports TRADEOFF_TEST_PG_URL and TRADEOFF_PG_DIR
#   .venv/bin/python -m pytest tests/db
#   .ci/postgres.sh stop              # stops the cluster named by TRADEOFF_PG_DIR, deletes it
#
# stdout carries only the export lines (for eval); progress goes to stderr. As root, the
# server runs as the `postgres` user (or `nobody`): PostgreSQL refuses to run as root.
# Trust authentication, loopback only, fsync off: for tests, never for data.
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
DB_NAME="tradeoff_test"
DB_USER="tradeoff"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local dir="/usr/lib/postgresql/${PG_VERSION}/bin"
  if [[ -x "$dir/initdb" ]]; then echo "$dir"; return; fi
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  return 1
}

install_postgres() {
  if ! command -v apt-get >/dev/null || [[ $(id -u) -ne 0 ]]; then
    log "PostgreSQL ${PG_VERSION} not found and cannot install it (needs root and apt-get)"
    exit 1
  fi
  log "installing PostgreSQL with apt-get"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-${PG_VERSION}" >&2 \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

run_user() {
  if [[ $(id -u) -ne 0 ]]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; else echo nobody; fi
}

as_user() {  # run a command as the server's user, from a directory it can read
  local user="$1"; shift
  if [[ "$user" == "$(id -un)" ]]; then (cd "$PG_DIR" && "$@"); return; fi
  (cd "$PG_DIR" && runuser -u "$user" -- "$@")
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local bindir user port
  bindir="$(find_bindir)" || { install_postgres; bindir="$(find_bindir)"; }
  user="$(run_user)"
  PG_DIR="$(mktemp -d /tmp/tradeoff-pg.XXXXXX)"
  chmod 0755 "$PG_DIR"
  chown "$user" "$PG_DIR"
  port="$(free_port)"
  log "initdb in $PG_DIR as $user"
  as_user "$user" "$bindir/initdb" -D "$PG_DIR/data" -U "$DB_USER" --auth=trust \
    --encoding=UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
  as_user "$user" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >&2 \
    || { cat "$PG_DIR/server.log" >&2; exit 1; }
  as_user "$user" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME"
  echo "$bindir $user" >"$PG_DIR/state"
  log "running on 127.0.0.1:$port"
  echo "export TRADEOFF_PG_DIR='$PG_DIR'"
  echo "export TRADEOFF_TEST_PG_URL='postgresql+psycopg://${DB_USER}@127.0.0.1:${port}/${DB_NAME}'"
}

stop() {
  PG_DIR="${1:-${TRADEOFF_PG_DIR:-}}"
  if [[ -z "$PG_DIR" || ! -f "$PG_DIR/state" ]]; then
    log "no cluster to stop (set TRADEOFF_PG_DIR or pass its directory)"; exit 1
  fi
  local bindir user
  read -r bindir user <"$PG_DIR/state"
  as_user "$user" "$bindir/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >&2 || true
  rm -rf "$PG_DIR"
  log "stopped and removed $PG_DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
