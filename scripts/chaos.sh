#!/usr/bin/env bash
# Fault runs (README, Reliability): `streamlens-loadgen chaos` starts the services on the local
# stack, injects the faults and checks the oracle; this entry point only finds the binaries.
#   scripts/chaos.sh [kill|crashloop|twokills|scale|stale|postgres|broker|all|ci ...]
#   (default: each fault alone, then all). Settings: streamlens-loadgen chaos --help
#   (CHAOS_SECONDS, CHAOS_RATE, CHAOS_PG_DOWN_SECS, CHAOS_BROKER_DOWN_SECS,
#   CHAOS_RESTART_MAX_SECS, CHAOS_SEED; CHAOS_PROFILE picks the build, release by default).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/${CHAOS_PROFILE:-release}}
: "${KAFKA_BROKERS:?run through make chaos, which starts the stack}" "${POSTGRES_DSN:?}" "${TANSU_BIN:?}"
exec "$BIN/streamlens-loadgen" chaos --bin-dir "$BIN" "$@"
