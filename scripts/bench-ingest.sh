#!/usr/bin/env bash
# Ingestion benchmark. In one run, on this machine and one broker: the raw rate of a plain
# librdkafka producer, the batch endpoint's events/s, the OpenTelemetry endpoint's spans/s (each
# span a call: two events), and the single-event endpoint under wrk (-t2 -c64, unique request
# ids over 3 tenants x 3 routes x 3 models), with API keys off and on. Each measurement runs on
# a fresh Tansu of the benchmark's own (in-memory, on its own port), so figures do not depend
# on what a broker already holds; beside each rate stand the API's and the broker's CPU per
# event and the API's peak resident memory. Raw, batch and OTLP alternate for BENCH_ROUNDS
# rounds, the wrk loads for BENCH_WRK_ROUNDS, and medians are compared, since the machine is
# shared and noisy.
#   BENCH_EVENTS (1000000)  BENCH_ROUNDS (3)  BENCH_BATCH_SIZE (1000)  BENCH_BATCH_CONCURRENCY (16)
#   BENCH_SPANS_PER_EXPORT (512): OTLP exports carry BENCH_EVENTS / 2 spans in all
#   BENCH_WRK_SECONDS (20)  BENCH_WRK_ROUNDS (3)  BENCH_WRK_CONNECTIONS (64)
#   BENCH_SOAK_SECONDS (0): then the single endpoint under wrk, keys on, for this long, with the
#   API's resident memory sampled every minute (600 for the ten-minute run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
EVENTS=${BENCH_EVENTS:-1000000}
ROUNDS=${BENCH_ROUNDS:-3}
BATCH_SIZE=${BENCH_BATCH_SIZE:-1000}
BATCH_CONCURRENCY=${BENCH_BATCH_CONCURRENCY:-16}
SPANS_PER_EXPORT=${BENCH_SPANS_PER_EXPORT:-512}
WRK_SECONDS=${BENCH_WRK_SECONDS:-20}
WRK_ROUNDS=${BENCH_WRK_ROUNDS:-3}
WRK_CONNECTIONS=${BENCH_WRK_CONNECTIONS:-64}
SOAK_SECONDS=${BENCH_SOAK_SECONDS:-0}
PORT=${BENCH_PORT:-18080}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19092}
: "${TANSU_BIN:?run through make bench-ingest, which installs Tansu}" "${POSTGRES_DSN:?}"
if ! command -v wrk >/dev/null; then
  echo "[bench-ingest] installing wrk (Debian package, once)" >&2
  apt-get install -y -qq wrk >/dev/null
fi

pids=()
broker=""
api=""
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_for() { for _ in $(seq 1 150); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "timed out: $1" >&2; exit 1; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# Tansu's in-memory store slows down as it fills, so every measurement gets a fresh broker
# (and, for the endpoints, a fresh API on it): no figure pays for the data of another.
fresh_broker() {
  cleanup
  local url=tcp://127.0.0.1:$KAFKA_PORT
  "$TANSU_BIN" broker --storage-engine memory://tansu/ --listener-url "$url" --advertised-listener-url "$url" >/dev/null 2>&1 &
  broker=$!
  pids+=("$broker")
  wait_for "(exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT)"
}
# `fresh_api keys` runs with API keys (and the per-key rate limit, set above the load so that
# its cost is measured but it never refuses); otherwise AUTH_MODE=disabled, the produce path.
fresh_api() {
  fresh_broker
  local auth=(AUTH_MODE=disabled)
  [ "${1:-}" = keys ] && auth=(AUTH_MODE=keys RATE_LIMIT_EVENTS_PER_SEC=10000000 RATE_LIMIT_BURST=10000000)
  env "${auth[@]}" KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT HTTP_PORT=$PORT OTLP_GRPC_PORT=0 HTTP_HOST=127.0.0.1 RUST_LOG=warn "$BIN/ingestion-api" &
  api=$!
  pids+=("$api")
  wait_for "curl -fsS http://127.0.0.1:$PORT/ready"
}
# Runs a measurement against the fresh API and adds the API's and the broker's CPU seconds
# over it, and the API's peak memory, to the JSON it printed.
measured() {
  local api0 broker0 out
  api0=$(cpu "$api"); broker0=$(cpu "$broker")
  out=$("$@")
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(api_cpu_s=float(sys.argv[2]), broker_cpu_s=float(sys.argv[3]), api_peak_mib=int(sys.argv[4])); print(json.dumps(r))' \
    "$out" "$(minus "$(cpu "$api")" "$api0")" "$(minus "$(cpu "$broker")" "$broker0")" "$(peak_mib "$api")"
}
wrk_single() {
  local json
  json=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"${WRK_SECONDS}s" --latency -s "$ROOT/scripts/wrk_single.lua" "http://127.0.0.1:$PORT" | sed -n 's/^WRK_JSON //p')
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(mode="single", auth=sys.argv[2]); print(json.dumps(r))' "$json" "$1"
}

lg() { "$BIN/streamlens-loadgen" "$@"; }
"$BIN/streamlens-admin" migrate >/dev/null
keys=$(for t in 0 1 2; do "$BIN/streamlens-admin" keys create --tenant "tenant-$t" --name bench-ingest; done | paste -sd,)
results=()
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: raw producer, $EVENTS events" >&2
  fresh_broker
  api=$broker # no API here: its CPU is not measured
  results+=("$(measured lg raw --brokers "127.0.0.1:$KAFKA_PORT" --topic bench.raw --events "$EVENTS")")
  echo "round $round/$ROUNDS: batch endpoint, $EVENTS events ($BATCH_SIZE per batch, $BATCH_CONCURRENCY in flight)" >&2
  fresh_api
  results+=("$(measured lg batch --url "http://127.0.0.1:$PORT" --events "$EVENTS" --batch-size "$BATCH_SIZE" --concurrency "$BATCH_CONCURRENCY")")
  echo "round $round/$ROUNDS: OTLP endpoint, $((EVENTS / 2)) spans ($SPANS_PER_EXPORT per export, $BATCH_CONCURRENCY in flight)" >&2
  fresh_api
  results+=("$(measured lg otlp --url "http://127.0.0.1:$PORT" --spans $((EVENTS / 2)) --spans-per-export "$SPANS_PER_EXPORT" --concurrency "$BATCH_CONCURRENCY")")
done
for round in $(seq 1 "$WRK_ROUNDS"); do
  for auth in disabled keys; do
    echo "round $round/$WRK_ROUNDS: single endpoint under wrk, $WRK_CONNECTIONS connections for ${WRK_SECONDS}s, API keys $auth" >&2
    fresh_api "$auth"
    [ "$auth" = keys ] && export WRK_KEYS=$keys || unset WRK_KEYS
    # A few seconds first, so connections, producer and caches are warm when measuring.
    wrk -t2 -c"$WRK_CONNECTIONS" -d3s -s "$ROOT/scripts/wrk_single.lua" "http://127.0.0.1:$PORT" >/dev/null
    results+=("$(measured wrk_single "$auth")")
  done
done
if [ "$SOAK_SECONDS" -gt 0 ]; then
  echo "soak: single endpoint under wrk, keys on, for ${SOAK_SECONDS}s; resident memory every minute" >&2
  fresh_api keys
  export WRK_KEYS=$keys
  rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$api/status"; }
  samples=("$(rss)")
  wrk -t2 -c"$WRK_CONNECTIONS" -d"${SOAK_SECONDS}s" --latency -s "$ROOT/scripts/wrk_single.lua" "http://127.0.0.1:$PORT" >"${TMPDIR:-/tmp}/bench-ingest-soak.txt" &
  load=$!
  for _ in $(seq 1 $((SOAK_SECONDS / 60))); do sleep 60; samples+=("$(rss)"); done
  wait "$load"
  soak=$(sed -n 's/^WRK_JSON //p' "${TMPDIR:-/tmp}/bench-ingest-soak.txt")
  results+=("$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(mode="soak", rss_mib=[int(x) for x in sys.argv[2:]]); print(json.dumps(r))' "$soak" "${samples[@]}")")
fi
cleanup

python3 - "${results[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
by = lambda mode, **kw: [r for r in runs if r["mode"] == mode and all(r.get(k) == v for k, v in kw.items())]
med = lambda rs, f: statistics.median(f(r) for r in rs)
raw, batch, otlp = by("raw"), by("batch"), by("otlp")
off, on = by("single", auth="disabled"), by("single", auth="keys")
lost = sum(r["events"] - r["accepted"] for r in batch) + sum(r["failed"] for r in raw)
lost += sum(2 * (r["spans"] - r["accepted"]) for r in otlp)
lost += sum(r["errors"] + r["non2xx"] for r in off + on)
raw_m, batch_m = med(raw, lambda r: r["events_per_sec"]), med(batch, lambda r: r["events_per_sec"])
otlp_m = med(otlp, lambda r: r["spans_per_sec"])
print(json.dumps({"runs": runs}))
print()
fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
us = lambda rs, key, n: med(rs, lambda r: 1e6 * r[key] / n(r))
peak = lambda rs: max(r["api_peak_mib"] for r in rs)
print(f"raw librdkafka producer  median {raw_m:>10,.0f} events/s   (rounds: {fmt(r['events_per_sec'] for r in raw)})"
      f"  broker {us(raw, 'broker_cpu_s', lambda r: r['events']):.1f} us CPU/event")
print(f"batch endpoint           median {batch_m:>10,.0f} events/s   (rounds: {fmt(r['events_per_sec'] for r in batch)})  = {batch_m/raw_m:.2f} x raw"
      f"  API {us(batch, 'api_cpu_s', lambda r: r['events']):.1f}, broker {us(batch, 'broker_cpu_s', lambda r: r['events']):.1f} us CPU/event, API peak {peak(batch)} MiB")
print(f"OTLP endpoint            median {otlp_m:>10,.0f} spans/s    (rounds: {fmt(r['spans_per_sec'] for r in otlp)})  = {otlp_m/batch_m:.2f} x the batch's events/s, {2*otlp_m/raw_m:.2f} x raw in events"
      f"  API {us(otlp, 'api_cpu_s', lambda r: r['spans']):.1f}, broker {us(otlp, 'broker_cpu_s', lambda r: r['spans']):.1f} us CPU/span, API peak {peak(otlp)} MiB")
for name, rs in (("single, keys off", off), ("single, keys on ", on)):
    rate = med(rs, lambda r: r["requests_per_sec"])
    print(f"{name}         median {rate:>10,.0f} req/s      (rounds: {fmt(r['requests_per_sec'] for r in rs)})"
          f"  p50 {med(rs, lambda r: r['p50_ms']):.2f} ms, p99 {med(rs, lambda r: r['p99_ms']):.2f} ms"
          f"  API {us(rs, 'api_cpu_s', lambda r: r['requests']):.1f}, broker {us(rs, 'broker_cpu_s', lambda r: r['requests']):.1f} us CPU/request, API peak {peak(rs)} MiB")
off_m, on_m = med(off, lambda r: r["requests_per_sec"]), med(on, lambda r: r["requests_per_sec"])
print(f"keys on / keys off: {on_m/off_m:.2f}")
for r in by("soak"):
    print(f"soak, keys on, {r['seconds']:.0f} s: {r['requests']:,} requests, {r['requests_per_sec']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms;"
          f" API resident MiB at the start and each minute: {', '.join(map(str, r['rss_mib']))}")
    lost += r["errors"] + r["non2xx"]
print(f"events not acknowledged: {lost}")
PY
