#!/usr/bin/env bash
# Runs the services on the local stack (started by `make run`) until Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
API_PORT=${HTTP_PORT:-8080}
PROCESSOR_PORT=${PROCESSOR_PORT:-9091}
QUERY_PORT=${QUERY_PORT:-8081}

pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# A key for the demo tenant, so both APIs can be tried at once.
KEY=$("$BIN/streamlens-admin" keys create --tenant acme --name "make run" 2>/dev/null)

HTTP_PORT=$API_PORT "$BIN/ingestion-api" &
pids+=($!)
HTTP_PORT=$PROCESSOR_PORT "$BIN/metrics-processor" &
pids+=($!)
HTTP_PORT=$QUERY_PORT "$BIN/metrics-api" &
pids+=($!)

for url in "http://127.0.0.1:$API_PORT/ready" "http://127.0.0.1:$PROCESSOR_PORT/health" "http://127.0.0.1:$QUERY_PORT/ready"; do
  for _ in $(seq 1 150); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a service exited; see its log above" >&2; exit 1; }; done
    sleep 0.2
  done
done

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat <<MSG

StreamLens is running.
  ingestion API      http://127.0.0.1:$API_PORT   (OpenAPI: /openapi.json, metrics: /metrics)
  metrics processor  http://127.0.0.1:$PROCESSOR_PORT   (/health, /ready, /metrics)
  metrics API        http://127.0.0.1:$QUERY_PORT   (OpenAPI: /openapi.json)
  API key (tenant acme, shown once): $KEY
  Kafka broker       $KAFKA_BROKERS
  Postgres           $POSTGRES_DSN

Try it:
  curl -i -X POST http://127.0.0.1:$API_PORT/v1/llm/request -H 'content-type: application/json' -H 'Authorization: Bearer $KEY' \\
    -d '{"request_id":"r-1","tenant_id":"acme","route":"/chat","model":"gpt-4o-mini","timestamp":"$now","prompt_tokens":42}'
  curl -i -X POST http://127.0.0.1:$API_PORT/v1/llm/response -H 'content-type: application/json' -H 'Authorization: Bearer $KEY' \\
    -d '{"request_id":"r-1","timestamp":"$now","latency_ms":730,"completion_tokens":128,"finish_reason":"stop"}'

A few seconds after that minute ends, its window is in Postgres, on llm.metrics and in the API:
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/metrics?tenant_id=acme'
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/metrics?granularity=1h&group_by=model'
  curl -s -H 'Authorization: Bearer $KEY' 'http://127.0.0.1:$QUERY_PORT/v1/summary'

Press Ctrl-C to stop.
MSG
wait
