#!/usr/bin/env bash
# Fault runs: an oracle stream through the ingestion API into the processor while faults are
# injected, then every stored window and the last llm.metrics record of every window compared
# with the oracle (streamlens-loadgen check). Each scenario runs on topics, a consumer group and
# a database of its own, on the local stack.
#   scripts/chaos.sh [kill|crashloop|twokills|scale|stale|postgres|broker|all|ci ...]
#     (default: each fault alone, then all)
#   CHAOS_SECONDS (180) load per scenario   CHAOS_RATE calls/s (100)   CHAOS_PROFILE (release)
#   CHAOS_PG_DOWN_SECS (60): how long Postgres stays down
#   CHAOS_BROKER_DOWN_SECS (30): how long the broker stays stopped under load
#   CHAOS_RESTART_MAX_SECS (20): a killed processor is restarted 0 to this many seconds later
# Scenarios with broker faults (broker, all, ci) run a broker of their own that keeps its log
# in a SQLite file, so what it acknowledged survives a restart.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/${CHAOS_PROFILE:-release}}
LOAD=${CHAOS_SECONDS:-180}
RATE=${CHAOS_RATE:-100}
PG_DOWN=${CHAOS_PG_DOWN_SECS:-60}
BROKER_DOWN=${CHAOS_BROKER_DOWN_SECS:-30}
RESTART_MAX=${CHAOS_RESTART_MAX_SECS:-20}
BASE_BROKERS=$KAFKA_BROKERS
SESSION_MS=6000
JOIN_TTL=90
: "${KAFKA_BROKERS:?run through make chaos, which starts the stack}" "${POSTGRES_DSN:?}" "${TANSU_BIN:?}"
BASE_DSN=$POSTGRES_DSN
OUT=${CHAOS_OUT:-$ROOT/target/chaos}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

say() { printf '[chaos %s] %s\n' "$(date +%T)" "$*" >&2; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  # A scenario that failed half-way must not leave Postgres stopped.
  port_open 5432 || "$ROOT/scripts/stack.sh" pg-start
}
trap cleanup EXIT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A loopback port nothing listens on (from the range below the kernel's ephemeral ports).
free_port() {
  local port
  while :; do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    port_open "$port" || { echo "$port"; return; }
  done
}
wait_for() { for _ in $(seq 1 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; say "timed out: $1"; exit 1; }

declare -A PROC
# start_processor NAME: one more instance in the scenario's group.
start_processor() {
  local port
  port=$(free_port)
  HTTP_PORT=$port RUST_LOG=info "$BIN/metrics-processor" >>"$OUT/$scenario.$1.log" 2>&1 &
  PROC[$1]=$!
  PORT[$1]=$port
  pids+=($!)
}
declare -A PORT
random() { awk -v lo="$1" -v hi="$2" -v seed="$RANDOM$RANDOM" 'BEGIN { srand(seed); printf "%.1f\n", lo + (hi - lo) * rand() }'; }
# Waits until every input partition is owned and committing again (all 2 x 6 positions
# written in the last 3 s), and notes how long that took: the next fault starts from a
# recovered system.
recovered() {
  local started=$SECONDS since fresh
  since=$(psql "$POSTGRES_DSN" -tAc "SELECT now() + interval '2 seconds'" 2>/dev/null || echo now)
  while [ $((SECONDS - started)) -lt 60 ]; do
    fresh=$(psql "$POSTGRES_DSN" -tAc "SELECT count(*) FROM processor_positions WHERE consumer_group = '$CONSUMER_GROUP' AND updated_at > GREATEST('$since'::timestamptz, now() - interval '3 seconds')" 2>/dev/null || echo 0)
    if [ "${fresh:-0}" -ge 12 ]; then
      echo "  every partition committing again after $((SECONDS - started)) s" >>"$OUT/$scenario.faults"
      return 0
    fi
    sleep 0.5
  done
  echo "  NOT recovered within 60 s: some partitions have no owner" >>"$OUT/$scenario.faults"
  say "$scenario: the group did not recover within 60 s; going on, the check will tell what it cost"
}

# The faults run in this shell while the stream is posted in the background, so they can
# replace the instances they kill. Each returns before the load ends.
kill_at_random() { # N: kill -9 at random points, each followed by a restart 0-CHAOS_RESTART_MAX_SECS s later
  local i
  for i in $(seq 1 "$1"); do
    sleep "$(random 2 6)"
    kill -KILL "${PROC[a]}"
    wait "${PROC[a]}" 2>/dev/null || true
    sleep "$(random 0 "$RESTART_MAX")"
    start_processor a
    recovered
  done
  echo "$1 kill -9 of the processor at random points, each restarted 0-$RESTART_MAX s later" >>"$OUT/$scenario.faults"
}
# What a supervisor does to a crash loop, N times: kill -9, restart 0-1.5 s later, kill -9
# again 0-5 s after the new instance answers, restart 0-5 s later. The second instance dies
# inside the first one's session, often before its first assignment.
crash_loop() {
  local i
  for i in $(seq 1 "$1"); do
    sleep "$(random 1 4)"
    kill -KILL "${PROC[a]}"; wait "${PROC[a]}" 2>/dev/null || true
    sleep "$(random 0 1.5)"
    start_processor a
    wait_for "port_open ${PORT[a]}"
    sleep "$(random 0 5)"
    kill -KILL "${PROC[a]}"; wait "${PROC[a]}" 2>/dev/null || true
    sleep "$(random 0 5)"
    start_processor a
    recovered
  done
  echo "$1 crash loops (kill -9, quick restart, kill -9 soon after, quick restart)" >>"$OUT/$scenario.faults"
}
freeze() { # an instance frozen past its session; its partitions move; it wakes up stale
  kill -STOP "${PROC[$1]}"
  sleep $(( SESSION_MS / 1000 + 8 ))
  kill -CONT "${PROC[$1]}"
  echo "one of two instances frozen for $(( SESSION_MS / 1000 + 8 )) s, then resumed" >>"$OUT/$scenario.faults"
  recovered
}
postgres_down() {
  "$ROOT/scripts/stack.sh" pg-stop 2>/dev/null
  sleep "$1"
  "$ROOT/scripts/stack.sh" pg-start 2>/dev/null
  echo "Postgres stopped for $1 s" >>"$OUT/$scenario.faults"
  recovered
}
# A broker of the scenario's own, on SQLite storage: what it acknowledged survives a restart.
start_broker() {
  RUST_LOG=warn setsid "$TANSU_BIN" broker --storage-engine "sqlite:///$OUT/$scenario.broker.db" \
    --listener-url "tcp://127.0.0.1:$BROKER_PORT" --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    >>"$OUT/$scenario.broker.log" 2>&1 </dev/null &
  BROKER_PID=$!
  pids+=($!)
  wait_for "port_open $BROKER_PORT"
}
broker_crash() { # kill -9, back after $1 s
  kill -KILL "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  sleep "$1"
  start_broker
  echo "broker killed (kill -9) and restarted after $1 s" >>"$OUT/$scenario.faults"
  recovered
}
broker_stopped() { # away under load for $1 s: the ingestion API must answer 503, not lose
  # Killed rather than stopped: after SIGTERM, Tansu 0.6 on SQLite can come back with storage
  # that panics on the producers' next write; after SIGSTOP/SIGCONT the processors' group
  # may never be joined again (see README).
  kill -KILL "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  sleep "$1"
  start_broker
  echo "broker gone under load for $1 s (kill -9), then restarted" >>"$OUT/$scenario.faults"
  recovered
}
inject() {
  local third=$(( LOAD / 3 ))
  case $scenario in
    kill) kill_at_random $(( (LOAD - 20) / 25 )) ;;
    crashloop) crash_loop $(( (LOAD - 20) / 45 )) ;;
    twokills) # what a supervisor and then an operator do: restart at once, then after 15 s
      sleep $third; kill -KILL "${PROC[a]}"; wait "${PROC[a]}" 2>/dev/null || true
      start_processor a; recovered
      sleep $third; kill -KILL "${PROC[a]}"; wait "${PROC[a]}" 2>/dev/null || true
      sleep 15; start_processor a
      echo "2 kill -9 of the processor, restarted at once and after 15 s" >>"$OUT/$scenario.faults"; recovered ;;
    scale)
      sleep $third; start_processor b
      echo "scaled 1 -> 2 instances" >>"$OUT/$scenario.faults"; recovered
      sleep $third; kill -TERM "${PROC[a]}"
      echo "scaled 2 -> 1 instances" >>"$OUT/$scenario.faults"; recovered ;;
    stale) start_processor b; recovered; sleep $third; freeze a ;;
    postgres) sleep $third; postgres_down "$PG_DOWN" ;;
    broker) sleep $(( LOAD / 4 )); broker_crash 5; sleep $(( LOAD / 6 )); broker_stopped "$BROKER_DOWN" ;;
    # The short run: one instance, so no group churn (see README on Tansu), every other fault.
    ci) crash_loop 1; kill_at_random 1; postgres_down "$PG_DOWN"; broker_crash 5 ;;
    all)
      sleep 5; start_processor b
      echo "scaled 1 -> 2 instances" >>"$OUT/$scenario.faults"; recovered
      kill_at_random 2
      freeze b
      postgres_down "$PG_DOWN"
      broker_crash 5
      broker_stopped "$BROKER_DOWN"
      kill -TERM "${PROC[b]}"
      echo "scaled 2 -> 1 instances" >>"$OUT/$scenario.faults"; recovered ;;
  esac
}

run_scenario() {
  scenario=$1
  local tag db
  tag=chaos-$scenario-$(date +%s)
  db=streamlens_chaos_$scenario # kept after the run, to look into what the check found
  : >"$OUT/$scenario.faults"
  say "$scenario: $RATE calls/s for $LOAD s"
  psql "$BASE_DSN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null
  export KAFKA_BROKERS=$BASE_BROKERS
  if [[ $scenario =~ ^(broker|all|ci)$ ]]; then # the scenarios with broker faults
    BROKER_PORT=$(free_port)
    rm -f "$OUT/$scenario.broker.db"*
    start_broker
    export KAFKA_BROKERS=127.0.0.1:$BROKER_PORT
  fi
  export POSTGRES_DSN=${BASE_DSN%/*}/$db HTTP_HOST=127.0.0.1 RUST_LOG=warn AUTH_MODE=disabled \
    TOPIC_REQUESTS=$tag.requests TOPIC_RESPONSES=$tag.responses TOPIC_METRICS=$tag.metrics \
    TOPIC_DLQ=$tag.dlq TOPIC_PARTITIONS=6 CONSUMER_GROUP=$tag KAFKA_SESSION_TIMEOUT_MS=$SESSION_MS \
    JOIN_TTL_SECS=$JOIN_TTL UNREAD_PARTITION_SECS=10 WATCH_INTERVAL_MS=1000
  "$BIN/streamlens-admin" migrate 2>/dev/null
  "$BIN/streamlens-admin" topics 2>/dev/null
  local api_port
  api_port=$(free_port)
  HTTP_PORT=$api_port "$BIN/ingestion-api" >>"$OUT/$scenario.ingestion.log" 2>&1 &
  pids+=($!)
  wait_for "curl -fsS http://127.0.0.1:$api_port/ready"
  start_processor a

  # A stream the API never finishes accepting (a broker that does not come back) ends the
  # scenario as a failure instead of hanging.
  timeout $(( LOAD + 300 )) "$BIN/streamlens-loadgen" oracle --url "http://127.0.0.1:$api_port" --out "$OUT/$scenario.oracle.json" \
    --rate "$RATE" --duration-secs "$LOAD" >"$OUT/$scenario.stream.json" &
  local stream=$!
  inject
  if ! wait $stream; then
    say "$scenario: the stream was not all accepted within $(( LOAD + 300 )) s"
    cleanup
    return 1
  fi
  local verdict=0
  # The check prints the scenario's summary and fails on any difference, and on refusals
  # other than 503 (while the broker is away the ingestion API must say "try again").
  "$BIN/streamlens-loadgen" check --oracle "$OUT/$scenario.oracle.json" --dsn "$POSTGRES_DSN" \
    --brokers "$KAFKA_BROKERS" --metrics-topic "$TOPIC_METRICS" --wait-secs $(( JOIN_TTL + 120 )) \
    --scenario "$scenario" --stream "$OUT/$scenario.stream.json" --faults "$OUT/$scenario.faults" \
    >"$OUT/$scenario.check.json" || verdict=1
  cleanup
  return $verdict
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kill crashloop twokills scale stale postgres broker all)
failed=0
for s in "${scenarios[@]}"; do
  run_scenario "$s" || failed=1
done
exit $failed
