#!/usr/bin/env bash
# Processor benchmark. On a fresh Tansu of its own, preloads BENCH_PAIRS request/response pairs,
# then in one run measures: a plain librdkafka consumer reading both topics to the end, and the
# metrics processor (release build, every guarantee on) from start until its positions in
# Postgres cover every record; its CPU seconds and peak memory. Expects the local stack's
# Postgres (make bench-processor starts it), and the CPU Postgres spent on its commits.
#   BENCH_PAIRS (250000)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
PAIRS=${BENCH_PAIRS:-250000}
EVENTS=$((PAIRS * 2))
KAFKA_PORT=${BENCH_KAFKA_PORT:-19092}
PORT=${BENCH_PORT:-19091}
: "${TANSU_BIN:?run through make bench-processor, which installs Tansu}"
: "${POSTGRES_DSN:?run through make bench-processor}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
url=tcp://127.0.0.1:$KAFKA_PORT
"$TANSU_BIN" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done
BROKERS=127.0.0.1:$KAFKA_PORT
TAG=pbench$(date +%s)

echo "preloading $EVENTS events" >&2
"$BIN/streamlens-loadgen" raw --brokers "$BROKERS" --topic "$TAG" --events "$EVENTS" >/dev/null
echo "raw consumer" >&2
raw=$("$BIN/streamlens-loadgen" consume --brokers "$BROKERS" --topic "$TAG")

# CPU seconds of every Postgres process (backends, WAL writer, checkpointer), and of those
# that already exited (the postmaster's children's time): what the processor's commits cost
# the database.
pg_cpu() {
  local total=0 pid
  for pid in $(pgrep -x postgres); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  for pid in $(pgrep -x -o postgres); do
    total=$((total + $(awk '{print $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

echo "metrics processor" >&2
group=bench-$TAG
pg0=$(pg_cpu)
start=$(date +%s.%N)
KAFKA_BROKERS=$BROKERS TOPIC_REQUESTS=$TAG.requests TOPIC_RESPONSES=$TAG.responses \
  TOPIC_METRICS=$TAG.metrics TOPIC_DLQ=$TAG.dlq TOPIC_PARTITIONS=6 CONSUMER_GROUP=$group \
  HTTP_PORT=$PORT HTTP_HOST=127.0.0.1 RUST_LOG=warn "$BIN/metrics-processor" &
proc=$!
pids+=($proc)
while :; do
  done_events=$(psql "$POSTGRES_DSN" -tAc "SELECT COALESCE(SUM(position), 0) FROM processor_positions WHERE consumer_group = '$group' AND position >= 0")
  [ "${done_events:-0}" -ge "$EVENTS" ] && break
  kill -0 $proc 2>/dev/null || { echo "the processor exited" >&2; exit 1; }
  sleep 0.05
done
end=$(date +%s.%N)
ticks=$(awk '{print $14 + $15}' /proc/$proc/stat)
pg_ticks=$(( $(pg_cpu) - pg0 ))
hwm=$(awk '/VmHWM/ {print $2}' /proc/$proc/status)

python3 - "$raw" "$start" "$end" "$ticks" "$(getconf CLK_TCK)" "$hwm" "$EVENTS" "$pg_ticks" <<'PY'
import json, sys
raw = json.loads(sys.argv[1])
start, end, ticks, hz, hwm_kb, events = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
pg_cpu = int(sys.argv[8]) / hz
seconds = end - start
rate = events / seconds
cpu = ticks / hz
print(json.dumps({"raw": raw, "processor": {"events": events, "seconds": seconds, "events_per_sec": rate, "cpu_seconds": cpu, "postgres_cpu_seconds": pg_cpu, "peak_rss_kb": hwm_kb}}))
print()
print(f"raw consumer       {raw['events_per_sec']:>10,.0f} events/s")
print(f"metrics processor  {rate:>10,.0f} events/s  = {rate / raw['events_per_sec']:.2f} x raw   (start-up to last position written: {seconds:.1f} s)")
print(f"                   {events / cpu:>10,.0f} events per CPU-second, peak RSS {hwm_kb / 1024:.0f} MiB")
print(f"Postgres           {pg_cpu:.1f} CPU-seconds over the run ({pg_cpu * 1e6 / events:.1f} us per event)")
PY
