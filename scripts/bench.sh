#!/usr/bin/env bash
# End-to-end benchmark: demo traffic at a fixed rate through the ingestion API, the processor
# and the metrics API (release builds, API keys on), for BENCH_SECONDS. In the same run, on a
# broker of its own, the raw rates of a plain librdkafka producer and consumer as yardsticks.
# Reports the achieved ingest rate, the processor's lag, each window's freshness (window end
# to visible in the API), each service's peak memory and CPU, and whether the stored windows
# count every accepted call exactly once.
#   BENCH_RATE events/s (4000)  BENCH_SECONDS (240)  BENCH_RAW_EVENTS (500000)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RATE=${BENCH_RATE:-4000}
SECONDS_UNDER_LOAD=${BENCH_SECONDS:-240}
RAW_EVENTS=${BENCH_RAW_EVENTS:-500000}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19092}
INGESTION_PORT=18080 PROCESSOR_PORT=18091 QUERY_PORT=18081
JOIN_TTL=90
: "${TANSU_BIN:?run through make bench, which installs Tansu}" "${POSTGRES_DSN:?run through make bench}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_for() { for _ in $(seq 1 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "timed out: $1" >&2; exit 1; }
fresh_broker() {
  cleanup
  local url=tcp://127.0.0.1:$KAFKA_PORT
  "$TANSU_BIN" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" >/dev/null 2>&1 &
  pids+=($!)
  wait_for "(exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT)"
}
lg() { "$BIN/streamlens-loadgen" "$@"; }
BROKERS=127.0.0.1:$KAFKA_PORT

echo "raw yardsticks: a librdkafka producer and consumer, $RAW_EVENTS events" >&2
fresh_broker
raw_produce=$(lg raw --brokers "$BROKERS" --topic e2e.raw --events "$RAW_EVENTS")
raw_consume=$(lg consume --brokers "$BROKERS" --topic e2e.raw)

echo "end to end: $RATE events/s for $SECONDS_UNDER_LOAD s" >&2
fresh_broker
# A database of its own, so the figures do not depend on windows already stored.
DB=streamlens_bench_e2e
psql "$POSTGRES_DSN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export POSTGRES_DSN=${POSTGRES_DSN%/*}/$DB KAFKA_BROKERS=$BROKERS HTTP_HOST=127.0.0.1 RUST_LOG=warn
"$BIN/streamlens-admin" migrate
"$BIN/streamlens-admin" topics
declare -A KEYS
for tenant in acme globex initech; do KEYS[$tenant]=$("$BIN/streamlens-admin" keys create --tenant "$tenant"); done

HTTP_PORT=$INGESTION_PORT OTLP_GRPC_PORT=0 "$BIN/ingestion-api" & ingestion=$!
HTTP_PORT=$PROCESSOR_PORT JOIN_TTL_SECS=$JOIN_TTL "$BIN/metrics-processor" & processor=$!
HTTP_PORT=$QUERY_PORT "$BIN/metrics-api" & query=$!
pids+=($ingestion $processor $query)
wait_for "curl -fsS http://127.0.0.1:$INGESTION_PORT/ready"
wait_for "curl -fsS http://127.0.0.1:$PROCESSOR_PORT/ready"
wait_for "curl -fsS http://127.0.0.1:$QUERY_PORT/ready"

start=$(date +%s.%N)
end=$(python3 -c "print($start + $SECONDS_UNDER_LOAD)")
python3 "$ROOT/scripts/bench_watch.py" "http://127.0.0.1:$QUERY_PORT" "${KEYS[acme]}" \
  "http://127.0.0.1:$PROCESSOR_PORT/metrics" "ingestion=$ingestion,processor=$processor,query=$query" \
  "$start" "$end" > /tmp/streamlens-bench-watch.json &
watcher=$!
demo=$(lg demo --url "http://127.0.0.1:$INGESTION_PORT" --rate "$RATE" --duration-secs "$SECONDS_UNDER_LOAD" \
  --keys "acme=${KEYS[acme]},globex=${KEYS[globex]},initech=${KEYS[initech]}" 2>/dev/null)
wait $watcher
watch=$(cat /tmp/streamlens-bench-watch.json)

# Every accepted call counted once: wait until the stored windows hold them all (calls never
# answered are decided after the join TTL), or report the difference.
expected=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['requests_accepted'])" "$demo")
stored=0
for _ in $(seq 1 $(( (JOIN_TTL + 90) * 2 ))); do
  stored=$(psql "$POSTGRES_DSN" -tAc "SELECT COALESCE(SUM(requests), 0) FROM llm_metrics")
  [ "$stored" -eq "$expected" ] && break
  sleep 0.5
done
settled=$(python3 -c "print(round($(date +%s.%N) - $end, 1))")
stats() { echo "{\"peak_rss_kb\": $(awk '/VmHWM/ {print $2}' /proc/$1/status), \"cpu_ticks\": $(awk '{print $14 + $15}' /proc/$1/stat)}"; }
services="{\"ingestion\": $(stats $ingestion), \"processor\": $(stats $processor), \"query\": $(stats $query)}"
cleanup
psql "${POSTGRES_DSN%/*}/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true

python3 - "$raw_produce" "$raw_consume" "$demo" "$watch" "$services" "$stored" "$expected" "$settled" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
raw_p, raw_c, demo, watch, services = (json.loads(a) for a in sys.argv[1:6])
stored, expected, settled, hz = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
fresh = [f for f in watch["freshness_s"] if f is not None]
lags = [s["lag"] for s in watch["samples"] if s["lag"] is not None]
print(json.dumps({"raw_produce": raw_p, "raw_consume": raw_c, "demo": demo, "services": services,
                  "freshness_s": watch["freshness_s"], "samples": watch["samples"],
                  "stored_requests": stored, "accepted_requests": expected}))
print()
rate = demo["events_per_sec"]
print(f"offered load            {demo['events']:,} events in {demo['seconds']:.0f} s; accepted {demo['accepted']:,}, rejected {demo['rejected']}")
print(f"achieved ingest rate    {rate:>10,.0f} events/s  = {rate / raw_p['events_per_sec']:.4f} x raw producer ({raw_p['events_per_sec']:,.0f} events/s)")
print(f"raw consumer            {raw_c['events_per_sec']:>10,.0f} events/s")
if lags:
    print(f"processor lag           median {statistics.median(lags):,.0f}, max {max(lags):,.0f} records (sampled every second)")
if fresh:
    print(f"freshness               median {statistics.median(fresh):.1f} s, max {max(fresh):.1f} s after the window ended "
          f"({len(fresh)} of {len(watch['freshness_s'])} full minutes seen)")
for name, s in services.items():
    print(f"{name:<11} peak RSS {s['peak_rss_kb'] / 1024:>7.1f} MiB, CPU {s['cpu_ticks'] / hz:>6.2f} s")
# Memory over the run: each service's RSS at the start of every minute, and at the end.
samples = watch["samples"]
marks = [s for i, s in enumerate(samples) if i == 0 or int(s["t"]) // 60 != int(samples[i - 1]["t"]) // 60] + samples[-1:]
for name in services:
    curve = ", ".join(f"{s[name + '_rss_mib']:.0f}" for s in marks)
    print(f"{name:<11} RSS by minute (MiB): {curve}")
verdict = "exact" if stored == expected else f"DIFFERENT by {stored - expected}"
print(f"calls counted           {stored:,} stored / {expected:,} accepted: {verdict} ({settled:.0f} s after the load ended)")
PY
