#!/usr/bin/env bash
# The local stack: a real PostgreSQL and a real Kafka-compatible broker (Tansu) on loopback.
#
#   scripts/stack.sh up      install what is missing, start both, create topics, migrate
#   scripts/stack.sh down    stop both (data stays in $STACK_DIR)
#   scripts/stack.sh env     print the variables services and tests use
#   scripts/stack.sh pg-stop, pg-start   Postgres alone (the fault runs stop it on purpose)
#
# Idempotent: anything already running is reused. Settings (environment):
#   STACK_DIR (.stack)   STACK_PG_PORT (5432)   STACK_KAFKA_PORT (9092)
#   TOPIC_PARTITIONS (6) STREAMLENS_TOOLS ($HOME/.cache/streamlens): where Tansu is installed
#   STACK_PG_DATA (/var/tmp/streamlens/postgres-PORT): outside the checkout, which the
#   postgres account may not be allowed to enter when running as root
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
PG_PORT=${STACK_PG_PORT:-5432}
KAFKA_PORT=${STACK_KAFKA_PORT:-9092}
TOOLS=${STREAMLENS_TOOLS:-$HOME/.cache/streamlens}
TANSU_VERSION=0.6.0
# Memory storage for the stack; SQLite storage (a file that survives a restart) for the
# broker faults of scripts/chaos.sh.
TANSU_BIN=$TOOLS/tansu-$TANSU_VERSION-lite/bin/tansu
PG_DATA=${STACK_PG_DATA:-/var/tmp/streamlens/postgres-$PG_PORT}
PG_SOCKET=$PG_DATA.run
DSN="postgres://streamlens:streamlens@127.0.0.1:$PG_PORT/streamlens"
BROKERS="127.0.0.1:$KAFKA_PORT"

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  for _ in $(seq 1 $(($2 * 10))); do port_open "$1" && return 0; sleep 0.1; done
  die "$3 did not open port $1 within $2 s"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }

pg_bin_dir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

install_postgres() {
  pg_bin_dir >/dev/null && return 0
  say "installing PostgreSQL (Debian package)"
  command -v apt-get >/dev/null || die "PostgreSQL is missing and apt-get is not available: install PostgreSQL (initdb, pg_ctl) yourself"
  as_root apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2 || die "could not install PostgreSQL"
  pg_bin_dir >/dev/null || die "PostgreSQL installed but initdb not found"
}

# PostgreSQL refuses to run as root; use the postgres account the package creates.
pg_run() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

start_postgres() {
  if port_open "$PG_PORT"; then
    say "PostgreSQL already listening on $PG_PORT"
  else
    install_postgres
    local bin; bin=$(pg_bin_dir)
    mkdir -p "$PG_DATA" "$PG_SOCKET"
    if [ "$(id -u)" = 0 ]; then
      chmod 755 "$(dirname "$PG_DATA")"
      chown postgres:postgres "$PG_DATA" "$PG_SOCKET"
      chmod 700 "$PG_DATA"
    fi
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
      say "initialising a database cluster in $PG_DATA"
      pg_run "$bin/initdb" -D "$PG_DATA" -U streamlens --auth=trust -E UTF8 >"$STACK_DIR/initdb.log" 2>&1 \
        || die "initdb failed, see $STACK_DIR/initdb.log"
    fi
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    pg_run "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 start \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_SOCKET -c max_connections=200" >/dev/null \
      || die "PostgreSQL did not start, see $PG_DATA/server.log"
  fi
  local bin; bin=$(pg_bin_dir || true)
  if [ -n "$bin" ] && ! "$bin/psql" "postgres://streamlens@127.0.0.1:$PG_PORT/postgres" -tAc \
      "SELECT 1 FROM pg_database WHERE datname='streamlens'" 2>/dev/null | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U streamlens streamlens 2>/dev/null \
      || die "cannot create database 'streamlens' on port $PG_PORT (is another PostgreSQL there? set STACK_PG_PORT)"
  fi
}

install_tansu() {
  [ -x "$TANSU_BIN" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to install the Tansu broker"
  say "installing the Tansu $TANSU_VERSION broker from crates.io (once; a few minutes)"
  cargo install --locked --quiet tansu --version "$TANSU_VERSION" --features dynostore,libsql \
    --root "$TOOLS/tansu-$TANSU_VERSION-lite" >&2 || die "could not build Tansu $TANSU_VERSION"
}

start_broker() {
  if port_open "$KAFKA_PORT"; then
    say "broker already listening on $KAFKA_PORT"
    return 0
  fi
  mkdir -p "$STACK_DIR"
  say "starting Tansu on $BROKERS"
  # setsid: the broker outlives the shell that started it (make, CI steps).
  setsid "$TANSU_BIN" broker \
    --storage-engine "memory://tansu/" \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    >"$STACK_DIR/tansu.log" 2>&1 < /dev/null &
  echo $! >"$STACK_DIR/tansu.pid"
  wait_port "$KAFKA_PORT" 30 "Tansu (log: $STACK_DIR/tansu.log)"
}

print_env() {
  cat <<ENV
export KAFKA_BROKERS=$BROKERS
export POSTGRES_DSN=$DSN
export DATABASE_URL=$DSN
export TANSU_BIN=$TANSU_BIN
ENV
}

admin() {
  (cd "$ROOT" && eval "$(print_env)" && cargo run --quiet -p admin --bin streamlens-admin -- "$@")
}

up() {
  mkdir -p "$STACK_DIR"
  start_postgres
  install_tansu # the fault runs start brokers of their own, even when one is listening
  start_broker
  admin migrate || die "migrations failed"
  admin topics || die "topic set-up failed"
  say "ready: KAFKA_BROKERS=$BROKERS POSTGRES_DSN=$DSN"
}

down() {
  if [ -f "$STACK_DIR/tansu.pid" ]; then
    kill "$(cat "$STACK_DIR/tansu.pid")" 2>/dev/null && say "stopped Tansu" || true
    rm -f "$STACK_DIR/tansu.pid"
  fi
  if [ -f "$PG_DATA/postmaster.pid" ]; then stop_postgres; fi
}

stop_postgres() {
  pg_run "$(pg_bin_dir)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null && say "stopped PostgreSQL"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) print_env ;;
  # For the fault runs: Postgres alone, stopped and started again.
  pg-stop) stop_postgres ;;
  pg-start) mkdir -p "$STACK_DIR"; start_postgres ;;
  *) die "usage: $0 up|down|env|pg-stop|pg-start" ;;
esac
