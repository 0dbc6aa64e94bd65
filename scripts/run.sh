#!/usr/bin/env bash
# Runs the three services on the local stack (started by `make run`), with demo traffic from
# three tenants, until Ctrl-C; then stops everything it started.
#   BIN_DIR (target/release)  INGESTION_PORT (8080)  PROCESSOR_PORT (9091)  QUERY_PORT (8081)
#   OTLP_GRPC_PORT (4317)
#   DEMO_RATE events/s (20, 0 for none)  DEMO_BACKFILL_MINUTES (30)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
INGESTION_PORT=${INGESTION_PORT:-8080}
PROCESSOR_PORT=${PROCESSOR_PORT:-9091}
QUERY_PORT=${QUERY_PORT:-8081}
export OTLP_GRPC_PORT=${OTLP_GRPC_PORT:-4317}
DEMO_RATE=${DEMO_RATE:-20}
DEMO_BACKFILL_MINUTES=${DEMO_BACKFILL_MINUTES:-30}
: "${KAFKA_BROKERS:?run through make run, which starts the stack}" "${POSTGRES_DSN:?}"

pids=()
names=()
stop() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Say which service is slow to stop, every 10 s, rather than hang silently.
  for i in "${!pids[@]}"; do
    waited=0
    while kill -0 "${pids[$i]}" 2>/dev/null; do
      sleep 0.2
      waited=$((waited + 1))
      [ $((waited % 50)) -eq 0 ] && echo "still stopping: ${names[$i]} (pid ${pids[$i]}, $((waited / 5)) s)" >&2
    done
  done
  wait 2>/dev/null || true
  echo "StreamLens stopped."
}
trap stop INT TERM EXIT

# One key per demo tenant: the demo traffic posts with them, and the acme key opens the
# dashboard. A key is shown once; every `make run` makes new ones.
declare -A KEYS
for tenant in acme globex initech; do
  KEYS[$tenant]=$("$BIN/streamlens-admin" keys create --tenant "$tenant" --name "make run")
done
KEY=${KEYS[acme]}

# Alert webhooks may go to this machine only (ALERT_WEBHOOK_ALLOWED; none by default).
export ALERT_WEBHOOK_ALLOWED=${ALERT_WEBHOOK_ALLOWED:-http://127.0.0.1,http://localhost}

HTTP_PORT=$INGESTION_PORT "$BIN/ingestion-api" &
pids+=($!) names+=(ingestion-api)
HTTP_PORT=$PROCESSOR_PORT "$BIN/metrics-processor" &
pids+=($!) names+=(metrics-processor)
HTTP_PORT=$QUERY_PORT "$BIN/metrics-api" &
pids+=($!) names+=(metrics-api)

for url in "http://127.0.0.1:$INGESTION_PORT/ready" "http://127.0.0.1:$PROCESSOR_PORT/health" "http://127.0.0.1:$QUERY_PORT/ready"; do
  for _ in $(seq 1 150); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a service exited; see its log above" >&2; exit 1; }; done
    sleep 0.2
  done
done

# Demo objectives and an alert rule for acme, shown above the dashboard's totals (once per
# database). Its webhook signing secret comes with the first of them, and is printed below.
api() { curl -fsS -X "$1" "http://127.0.0.1:$QUERY_PORT$2" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' ${3:+-d "$3"}; }
secret=""
if [ "$DEMO_RATE" -gt 0 ] && [[ $(api GET /v1/slos) == *'"slos":[]'* ]]; then
  for slo in '{"name":"calls succeed","indicator":"availability","target":0.95}' \
             '{"name":"answers in 5 s","indicator":"latency","target":0.95,"threshold_ms":5000}'; do
    created=$(api POST /v1/slos "$slo")
    secret=${secret:-$(grep -o '"webhook_secret":"[0-9a-f]*"' <<<"$created" | cut -d'"' -f4 || true)}
  done
  api POST /v1/alerts/rules '{"name":"errors over 2%","metric":"error_rate","op":">","threshold":0.02,"window":"5m","min_requests":50}' >/dev/null
fi

if [ "$DEMO_RATE" -gt 0 ]; then
  RUST_LOG=warn "$BIN/streamlens-loadgen" demo --url "http://127.0.0.1:$INGESTION_PORT" \
    --keys "acme=${KEYS[acme]},globex=${KEYS[globex]},initech=${KEYS[initech]}" \
    --rate "$DEMO_RATE" --backfill-minutes "$DEMO_BACKFILL_MINUTES" &
  pids+=($!) names+=("demo traffic")
  demo="demo traffic: $DEMO_RATE events/s from tenants acme, globex and initech, after $DEMO_BACKFILL_MINUTES minutes of history"
else
  demo="no demo traffic (DEMO_RATE=0)"
fi

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat <<MSG

StreamLens is running, with $demo.
  dashboard          http://127.0.0.1:$QUERY_PORT/#key=$KEY
  ingestion API      http://127.0.0.1:$INGESTION_PORT   (OpenAPI: /openapi.json, metrics: /metrics)
  OpenTelemetry      http://127.0.0.1:$INGESTION_PORT/v1/traces (OTLP/HTTP), 127.0.0.1:$OTLP_GRPC_PORT (OTLP/gRPC)
  metrics processor  http://127.0.0.1:$PROCESSOR_PORT   (/health, /ready, /metrics)
  metrics API        http://127.0.0.1:$QUERY_PORT   (OpenAPI: /openapi.json)
  API key (tenant acme, shown once): $KEY${secret:+
  webhook secret     $secret   (acme's alert webhooks are signed with it; shown once)}
  Kafka broker       $KAFKA_BROKERS
  Postgres           $POSTGRES_DSN

Try it:
  curl -i -X POST http://127.0.0.1:$INGESTION_PORT/v1/llm/request -H 'content-type: application/json' -H 'Authorization: Bearer $KEY' \\
    -d '{"request_id":"r-1","tenant_id":"acme","route":"/chat","model":"gpt-4o-mini","timestamp":"$now","prompt_tokens":42}'
  curl -i -X POST http://127.0.0.1:$INGESTION_PORT/v1/llm/response -H 'content-type: application/json' -H 'Authorization: Bearer $KEY' \\
    -d '{"request_id":"r-1","timestamp":"$now","latency_ms":730,"completion_tokens":128,"finish_reason":"stop"}'

A few seconds after that minute ends, its window is in Postgres, on llm.metrics and in the API:
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/metrics'
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/metrics?granularity=5m&group_by=model'
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/summary'
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/slos'

Press Ctrl-C to stop.
MSG
wait
