#!/usr/bin/env bash
# Abuse run (README, Reliability): `streamlens-loadgen abuse` starts the services on the local
# stack, fuzzes both APIs with schemathesis, sends malformed bodies, a slow client and poison
# records, and judges. This entry point installs schemathesis (PyPI, into a venv of its own,
# once) and finds the binaries.
#   ABUSE_EXAMPLES (200): schemathesis examples per operation   CHAOS_PROFILE (release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/${CHAOS_PROFILE:-release}
VENV=${STREAMLENS_TOOLS:-$HOME/.cache/streamlens}/venv
SCHEMATHESIS_VERSION=4.32.5
: "${KAFKA_BROKERS:?run through make abuse, which starts the stack}" "${POSTGRES_DSN:?}"
INSTALLED=$VENV/installed-schemathesis-$SCHEMATHESIS_VERSION
if [ ! -f "$INSTALLED" ]; then
  echo "[abuse] installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $VENV (once)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  touch "$INSTALLED"
fi
exec "$BIN/streamlens-loadgen" abuse --bin-dir "$BIN" --schemathesis "$VENV/bin/schemathesis" \
  --hooks "$ROOT/scripts" "$@"
