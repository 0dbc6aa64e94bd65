#!/usr/bin/env bash
# Ingestion benchmark. In one run, on this machine and one broker: the raw rate of a plain
# librdkafka producer, the batch endpoint's events/s, the OpenTelemetry endpoint's spans/s (each
# span a call: two events), and the single endpoint's requests/s with
# p50/p99. Each measurement runs on a fresh Tansu of the benchmark's own (in-memory, on its own
# port), so figures do not depend on what a broker already holds. Raw, batch and OTLP alternate
# for BENCH_ROUNDS rounds and the medians are compared, since the machine is shared and noisy.
#   BENCH_EVENTS (1000000)  BENCH_ROUNDS (3)  BENCH_BATCH_SIZE (1000)  BENCH_BATCH_CONCURRENCY (16)
#   BENCH_SPANS_PER_EXPORT (512): OTLP exports carry BENCH_EVENTS / 2 spans in all
#   BENCH_SINGLE (20000)    BENCH_CONCURRENCY (32)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
EVENTS=${BENCH_EVENTS:-1000000}
ROUNDS=${BENCH_ROUNDS:-3}
BATCH_SIZE=${BENCH_BATCH_SIZE:-1000}
BATCH_CONCURRENCY=${BENCH_BATCH_CONCURRENCY:-16}
SINGLE=${BENCH_SINGLE:-20000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
SPANS_PER_EXPORT=${BENCH_SPANS_PER_EXPORT:-512}
PORT=${BENCH_PORT:-18080}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19092}
: "${TANSU_BIN:?run through make bench-ingest, which installs Tansu}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_for() { for _ in $(seq 1 150); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "timed out: $1" >&2; exit 1; }

# Tansu's in-memory store slows down as it fills, so every measurement gets a fresh broker
# (and, for the endpoints, a fresh API on it): no figure pays for the data of another.
fresh_broker() {
  cleanup
  local url=tcp://127.0.0.1:$KAFKA_PORT
  "$TANSU_BIN" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" >/dev/null 2>&1 &
  pids+=($!)
  wait_for "(exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT)"
}
fresh_api() {
  fresh_broker
  # The produce path is measured without API keys (a cached key lookup per request on top).
  AUTH_MODE=disabled KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT HTTP_PORT=$PORT OTLP_GRPC_PORT=0 HTTP_HOST=127.0.0.1 RUST_LOG=warn "$BIN/ingestion-api" &
  pids+=($!)
  wait_for "curl -fsS http://127.0.0.1:$PORT/ready"
}

lg() { "$BIN/streamlens-loadgen" "$@"; }
results=()
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: raw producer, $EVENTS events" >&2
  fresh_broker
  results+=("$(lg raw --brokers "127.0.0.1:$KAFKA_PORT" --topic bench.raw --events "$EVENTS")")
  echo "round $round/$ROUNDS: batch endpoint, $EVENTS events ($BATCH_SIZE per batch, $BATCH_CONCURRENCY in flight)" >&2
  fresh_api
  results+=("$(lg batch --url "http://127.0.0.1:$PORT" --events "$EVENTS" --batch-size "$BATCH_SIZE" --concurrency "$BATCH_CONCURRENCY")")
  echo "round $round/$ROUNDS: OTLP endpoint, $((EVENTS / 2)) spans ($SPANS_PER_EXPORT per export, $BATCH_CONCURRENCY in flight)" >&2
  fresh_api
  results+=("$(lg otlp --url "http://127.0.0.1:$PORT" --spans $((EVENTS / 2)) --spans-per-export "$SPANS_PER_EXPORT" --concurrency "$BATCH_CONCURRENCY")")
done
echo "single endpoint: $SINGLE requests, $CONCURRENCY concurrent" >&2
fresh_api
results+=("$(lg single --url "http://127.0.0.1:$PORT" --requests "$SINGLE" --concurrency "$CONCURRENCY")")
cleanup

python3 - "${results[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
raw = [r["events_per_sec"] for r in runs if r["mode"] == "raw"]
batch = [r["events_per_sec"] for r in runs if r["mode"] == "batch"]
otlp = [r["spans_per_sec"] for r in runs if r["mode"] == "otlp"]
single = next(r for r in runs if r["mode"] == "single")
lost = sum(r["events"] - r["accepted"] for r in runs if r["mode"] == "batch") + sum(r["failed"] for r in runs if r["mode"] == "raw")
lost += sum(2 * (r["spans"] - r["accepted"]) for r in runs if r["mode"] == "otlp")
raw_m, batch_m, otlp_m = statistics.median(raw), statistics.median(batch), statistics.median(otlp)
print(json.dumps({"runs": runs}))
print()
fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
print(f"raw librdkafka producer  median {raw_m:>10,.0f} events/s   (rounds: {fmt(raw)})")
print(f"batch endpoint           median {batch_m:>10,.0f} events/s   (rounds: {fmt(batch)})  = {batch_m/raw_m:.2f} x raw")
print(f"OTLP endpoint            median {otlp_m:>10,.0f} spans/s    (rounds: {fmt(otlp)})  = {otlp_m/batch_m:.2f} x the batch's events/s, {2*otlp_m/raw_m:.2f} x raw in events")
print(f"single endpoint                 {single['requests_per_sec']:>10,.0f} req/s      p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms"
      f"  = {single['requests_per_sec']/raw_m:.3f} x raw")
print(f"events not acknowledged: {lost + single['requests'] - single['accepted']}")
PY
