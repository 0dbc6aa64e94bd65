#!/usr/bin/env bash
# Abuse run: both HTTP APIs fuzzed from their OpenAPI documents (schemathesis), malformed
# bodies and slow clients (scripts/abuse_http.py), and malformed records produced straight onto
# the input topics. Expected: no 5xx, no crash, no stalled processor, every rejection a 4xx
# with a JSON body that says why. Runs on topics and a database of its own, on the local stack.
#   ABUSE_EXAMPLES (200): schemathesis examples per operation   CHAOS_PROFILE (release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/${CHAOS_PROFILE:-release}
EXAMPLES=${ABUSE_EXAMPLES:-200}
VENV=${STREAMLENS_TOOLS:-$HOME/.cache/streamlens}/venv
SCHEMATHESIS_VERSION=4.32.5
: "${KAFKA_BROKERS:?run through make abuse, which starts the stack}" "${POSTGRES_DSN:?}"
OUT=$ROOT/target/abuse
mkdir -p "$OUT"
say() { printf '[abuse %s] %s\n' "$(date +%T)" "$*" >&2; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; say "timed out: $1"; exit 1; }

tag=abuse-$(date +%s)
psql "$POSTGRES_DSN" -qc "DROP DATABASE IF EXISTS streamlens_abuse WITH (FORCE)" -c "CREATE DATABASE streamlens_abuse" 2>/dev/null
export POSTGRES_DSN=${POSTGRES_DSN%/*}/streamlens_abuse HTTP_HOST=127.0.0.1 RUST_LOG=warn \
  TOPIC_REQUESTS=$tag.requests TOPIC_RESPONSES=$tag.responses TOPIC_METRICS=$tag.metrics \
  TOPIC_DLQ=$tag.dlq TOPIC_PARTITIONS=3 CONSUMER_GROUP=$tag \
  KAFKA_DELIVERY_TIMEOUT_MS=2000 HTTP_REQUEST_TIMEOUT_MS=5000 API_KEY_CACHE_SECS=0 RATE_LIMIT_EVENTS_PER_SEC=0
"$BIN/streamlens-admin" migrate 2>/dev/null
"$BIN/streamlens-admin" topics 2>/dev/null
KEY=$("$BIN/streamlens-admin" keys create --tenant acme --name abuse 2>/dev/null)
ingest=$(free_port) processor=$(free_port) query=$(free_port)
HTTP_PORT=$ingest "$BIN/ingestion-api" >"$OUT/ingestion.log" 2>&1 & pids+=($!); ingest_pid=$!
HTTP_PORT=$processor "$BIN/metrics-processor" >"$OUT/processor.log" 2>&1 & pids+=($!); processor_pid=$!
HTTP_PORT=$query "$BIN/metrics-api" >"$OUT/query.log" 2>&1 & pids+=($!); query_pid=$!
wait_for "curl -fsS http://127.0.0.1:$ingest/ready"
wait_for "curl -fsS http://127.0.0.1:$processor/ready"
wait_for "curl -fsS http://127.0.0.1:$query/ready"

failed=0
fuzz() { # name port
  say "schemathesis on the $1 API, $EXAMPLES examples per operation"
  (cd "$OUT" && PYTHONPATH=$ROOT/scripts SCHEMATHESIS_HOOKS=abuse_hooks "$VENV/bin/schemathesis" run \
    "http://127.0.0.1:$2/openapi.json" -H "Authorization: Bearer $KEY" \
    --checks not_a_server_error,rejection_is_clear --max-examples "$EXAMPLES" \
    --phases examples,coverage,fuzzing --request-timeout 20 --workers 1 --no-color \
    >"$OUT/schemathesis-$1.txt" 2>&1) || { failed=1; say "schemathesis found problems in the $1 API: $OUT/schemathesis-$1.txt"; }
  grep -E "test cases|passed|failed" "$OUT/schemathesis-$1.txt" | tail -3 >&2 || true
}
fuzz ingestion "$ingest"
fuzz metrics "$query"

say "malformed bodies and a slow client"
python3 "$ROOT/scripts/abuse_http.py" "$ingest" "$query" "$KEY" >"$OUT/http.json" || failed=1
cat "$OUT/http.json" >&2

say "malformed records straight onto the input topics"
poison=$("$BIN/streamlens-loadgen" poison --brokers "$KAFKA_BROKERS" --topic "$tag" | python3 -c 'import json,sys; print(json.load(sys.stdin)["records"])')
dead_letters() { curl -fsS "http://127.0.0.1:$processor/metrics" | awk '/^streamlens_processor_dead_letters_total/ {s += $2} END {print s + 0}'; }
for _ in $(seq 1 120); do [ "$(dead_letters)" -ge "$poison" ] && break; sleep 0.5; done
# The processor goes on: a pair posted after the poison is counted.
at=$(date -u -d '-70 seconds' +%Y-%m-%dT%H:%M:%SZ)
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$ingest/v1/llm/batch" -H 'content-type: application/json' -H "Authorization: Bearer $KEY" -d \
  "[{\"type\":\"request\",\"request_id\":\"after-poison\",\"tenant_id\":\"acme\",\"route\":\"/after-poison\",\"model\":\"m\",\"timestamp\":\"$at\",\"prompt_tokens\":1},
    {\"type\":\"response\",\"request_id\":\"after-poison\",\"timestamp\":\"$at\",\"latency_ms\":5,\"completion_tokens\":1,\"finish_reason\":\"stop\"}]"
counted=0
for _ in $(seq 1 120); do
  counted=$(psql "$POSTGRES_DSN" -tAc "SELECT COALESCE(SUM(requests), 0) FROM llm_metrics WHERE route = '/after-poison'")
  [ "$counted" = 1 ] && break
  sleep 0.5
done
dead=$(dead_letters)
alive=yes
for p in $ingest_pid $processor_pid $query_pid; do kill -0 "$p" 2>/dev/null || alive=no; done
say "poison records: $poison produced, $dead dead letters; the pair after them counted: $counted; all services alive: $alive"
[ "$dead" -ge "$poison" ] && [ "$counted" = 1 ] && [ "$alive" = yes ] || failed=1
# No 5xx anywhere, by the services' own counters.
for port in $ingest $query; do
  errors=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/_http_requests_total\{/ && /status="5/ {s += $2} END {print s + 0}')
  say "5xx answers counted by the service on $port: $errors"
  [ "$errors" = 0 ] || failed=1
done
exit $failed
