#!/usr/bin/env bash
# Re-pricing benchmark: one tenant's BENCH_DAYS (30) of windows at make bench-query's density
# (10 route/model series, a window a minute each, with stored histograms and their roll-ups) in
# a database of its own, re-priced under a new price table with `streamlens-admin prices
# reprice`, then once more (nothing left to change). Reports the time and windows/s of both.
# The database is dropped afterwards.   BENCH_DAYS (30)  BENCH_DB (streamlens_bench_reprice)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
DAYS=${BENCH_DAYS:-30}
DB=${BENCH_DB:-streamlens_bench_reprice}
: "${POSTGRES_DSN:?run through make bench-reprice}"
DSN=${POSTGRES_DSN%/*}/$DB
MINUTES=$((DAYS * 1440))
prices=$(mktemp --suffix .json)
trap 'rm -f "$prices"; psql "$POSTGRES_DSN" -qc "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true' EXIT

psql "$POSTGRES_DSN" -qc "DROP DATABASE IF EXISTS $DB"
psql "$POSTGRES_DSN" -qc "CREATE DATABASE $DB"
POSTGRES_DSN=$DSN "$BIN/streamlens-admin" migrate 2>/dev/null
echo "generating $((MINUTES * 10)) windows of one tenant over $DAYS days" >&2
hist=$("$BIN/streamlens-loadgen" histogram --values 50 | tr -d '"')
# One minute for the windows and for the price change, so that the figure is the same whatever
# minute boundary passes while the data is generated.
base=$(date -u +%Y-%m-%dT%H:%M:00Z)
psql "$DSN" -q -v ON_ERROR_STOP=1 <<SQL
SELECT streamlens_ensure_partitions((now() - interval '$MINUTES minutes')::date - 1, now()::date + 2);
INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests, errors,
    completed, latency_sum_ms, prompt_tokens, cached_prompt_tokens, completion_tokens,
    reasoning_tokens, cost_nanos, cost_input_nanos, cost_output_nanos, avg_latency_ms,
    p50_latency_ms, p95_latency_ms, p99_latency_ms, max_latency_ms, avg_prompt_tokens,
    avg_completion_tokens, estimated_cost_usd, latency_histogram, updated_at, published_at)
SELECT 'tenant-7', '/route-' || (c % 5), 'model-' || (c / 5), ts, ts + interval '1 minute',
       50, 2, 50, 35000, 5000, 1200, 1000, 300, 22500000, 12500000, 10000000, 700, 650, 1500,
       2500, 3000, 100, 20, 0.0225, decode('$hist', 'hex'), now(), now()
FROM generate_series(1, $MINUTES) m
CROSS JOIN LATERAL (SELECT '$base'::timestamptz - m * interval '1 minute' AS ts) x
CROSS JOIN generate_series(0, 9) c;
VACUUM ANALYZE llm_metrics;
UPDATE rollup_state SET complete = false;
SQL
POSTGRES_DSN=$DSN "$BIN/streamlens-admin" rollups rebuild 2>&1 | tail -1 >&2
# The old prices were 2.5 / 10 USD a million input / output tokens for both models; the new
# table prices model-0 lower from 15 days ago and gives model-1 a cached-input discount. By
# hand: model-1's 216,000 windows at $0.0216, model-0's newest 108,000 at $0.018 and the older
# 108,000 at $0.0225 as before: $9,039.60.
change=$(date -u -d "${base%Z} UTC - 15 days" +%Y-%m-%dT%H:%M:00Z)
cat >"$prices" <<JSON
{"models": {"model-0": [{"input": 2.5, "output": 10},
                        {"valid_from": "$change", "input": 2, "output": 8}],
            "model-1": {"input": 2.5, "output": 10, "cached_input": 1.25, "reasoning": 12}}}
JSON
from=$(date -u -d "$DAYS days ago 1 day ago" +%Y-%m-%dT00:00:00Z)
to=$(date -u -d "tomorrow" +%Y-%m-%dT00:00:00Z)
for run in first again; do
  echo "== re-pricing ($run run)"
  POSTGRES_DSN=$DSN "$BIN/streamlens-admin" prices reprice --tenant tenant-7 --from "$from" \
    --to "$to" --file "$prices" --by bench 2>&1 | tail -1
done
