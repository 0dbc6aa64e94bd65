#!/usr/bin/env bash
# Replay after a restart. On a Tansu of its own (memory storage): BENCH_MINUTES of demo-shaped
# traffic at BENCH_RATE events/s, event times spread over the past BENCH_MINUTES and posted
# through the ingestion API as fast as it takes them, plus one request stamped 4 minutes
# ahead (a client with a fast clock), then live traffic at the same rate. Once the processor
# has caught up, it is killed (kill -9) and restarted at once; reported: how long until it is
# ready again and until it has caught up, and how many records it read again. Expects the
# local stack's Postgres (make bench-replay starts it).
#   BENCH_RATE (2000)   BENCH_MINUTES (60)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RATE=${BENCH_RATE:-2000}
MINUTES=${BENCH_MINUTES:-60}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19093}
INGEST_PORT=${BENCH_INGEST_PORT:-19080}
PROC_PORT=${BENCH_PORT:-19091}
: "${TANSU_BIN:?run through make bench-replay, which installs Tansu}"
: "${POSTGRES_DSN:?run through make bench-replay}"
say() { printf '[replay %s] %s\n' "$(date +%T)" "$*" >&2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
url=tcp://127.0.0.1:$KAFKA_PORT
"$TANSU_BIN" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done
tag=replay$(date +%s)
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT TOPIC_REQUESTS=$tag.requests TOPIC_RESPONSES=$tag.responses \
  TOPIC_METRICS=$tag.metrics TOPIC_DLQ=$tag.dlq TOPIC_PARTITIONS=6 CONSUMER_GROUP=bench-$tag \
  AUTH_MODE=disabled RATE_LIMIT_EVENTS_PER_SEC=0 HTTP_HOST=127.0.0.1 RUST_LOG=warn
"$BIN/streamlens-admin" topics >/dev/null 2>&1
HTTP_PORT=$INGEST_PORT OTLP_GRPC_PORT=0 "$BIN/ingestion-api" >/dev/null 2>&1 &
pids+=($!)
start_processor() { HTTP_PORT=$PROC_PORT "$BIN/metrics-processor" >>"$ROOT/target/replay-processor.log" 2>&1 & proc=$!; pids+=($proc); }
metric() { # the sum of a processor metric's series
  curl -fsS "http://127.0.0.1:$PROC_PORT/metrics" 2>/dev/null | awk -v m="$1" '$1 ~ "^"m"([{]|$)" {s += $2} END {print s + 0}'
}
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$PROC_PORT/ready" 2>/dev/null; }
caught_up() { # ready, and less than a second of traffic unread
  ready && [ "$(metric streamlens_processor_consumer_lag)" -lt "$RATE" ]
}
wait_until() { # condition seconds
  local started=$SECONDS
  until $1; do
    [ $((SECONDS - started)) -lt "$2" ] || { say "not $1 within $2 s"; exit 1; }
    sleep 0.2
  done
}
: >"$ROOT/target/replay-processor.log"
start_processor
for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://127.0.0.1:$INGEST_PORT/ready" 2>/dev/null && break; sleep 0.2; done

say "posting $MINUTES minutes of history at $RATE events/s ($((MINUTES * 60 * RATE)) events), then live traffic"
posted=$SECONDS
"$BIN/streamlens-loadgen" demo --url "http://127.0.0.1:$INGEST_PORT" --rate "$RATE" \
  --backfill-minutes "$MINUTES" >/dev/null 2>"$ROOT/target/replay-demo.log" &
pids+=($!)
until grep -q "minutes of history posted" "$ROOT/target/replay-demo.log"; do sleep 1; done
say "history posted in $((SECONDS - posted)) s"
ahead=$(date -u -d '+4 minutes' +%Y-%m-%dT%H:%M:%SZ)
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$INGEST_PORT/v1/llm/request" -H 'content-type: application/json' \
  -d "{\"request_id\":\"fast-clock\",\"tenant_id\":\"acme\",\"route\":\"/ahead\",\"model\":\"m\",\"timestamp\":\"$ahead\",\"prompt_tokens\":1}"
wait_until caught_up 1800
say "caught up $((SECONDS - posted)) s after posting began; live traffic for 60 s more"
sleep 60
wait_until caught_up 300

before=$(metric streamlens_processor_records_total)
kill -KILL "$proc"
wait "$proc" 2>/dev/null || true
killed=$(date +%s.%N)
start_processor
wait_until ready 600
up=$(date +%s.%N)
wait_until caught_up 600
done_at=$(date +%s.%N)
read_again=$(metric streamlens_processor_records_total)
python3 - "$killed" "$up" "$done_at" "$read_again" "$before" "$RATE" "$MINUTES" <<'PY'
import json, sys
killed, up, done, read, before, rate, minutes = map(float, sys.argv[1:])
live = rate * (done - killed)  # new traffic that arrived meanwhile
figures = {"history_minutes": minutes, "rate": rate, "records_before_kill": before,
           "ready_after_s": round(up - killed, 1), "caught_up_after_s": round(done - killed, 1),
           "records_read_after_restart": read, "of_which_new_traffic": round(live),
           "replayed_minutes_of_traffic": round(max(read - live, 0) / rate / 60, 2)}
print(json.dumps(figures))
PY
