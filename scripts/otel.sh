#!/usr/bin/env bash
# OpenTelemetry run (README, OpenTelemetry): `streamlens-loadgen otel` starts the services on
# the local stack and has the stock OpenTelemetry Python SDK export GenAI spans to
# /v1/traces and over OTLP/gRPC, then checks every window. This entry point installs the SDK and
# its OTLP/HTTP and OTLP/gRPC exporters (PyPI, into a venv of their own, once) and finds the
# binaries.
#   OTEL_CALLS (600): GenAI spans to export   CHAOS_PROFILE (release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/${CHAOS_PROFILE:-release}
VENV=${STREAMLENS_TOOLS:-$HOME/.cache/streamlens}/otel-venv
OTEL_VERSION=1.45.2
: "${KAFKA_BROKERS:?run through make test, which starts the stack}" "${POSTGRES_DSN:?}"
INSTALLED=$VENV/installed-$OTEL_VERSION
if [ ! -f "$INSTALLED" ]; then
  echo "[otel] installing the OpenTelemetry Python SDK $OTEL_VERSION from PyPI into $VENV (once)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "opentelemetry-sdk==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-http==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-grpc==$OTEL_VERSION"
  touch "$INSTALLED"
fi
exec "$BIN/streamlens-loadgen" otel --bin-dir "$BIN" --python "$VENV/bin/python" \
  --script "$ROOT/scripts/otel_export.py" "$@"
