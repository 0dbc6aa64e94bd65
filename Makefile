# StreamLens: `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
STACK := scripts/stack.sh
# Variables for services and tests, from the local stack.
STACK_ENV = eval "$$($(STACK) env)"

.PHONY: run test build-deps stack-up stack-down chromium build lint fmt bench bench-ingest bench-processor bench-replay bench-query bench-reprice bench-alerts migrate chaos soak abuse

## run: start Postgres and the broker, build and run the services on them with demo traffic
run: stack-up
	cargo build --release -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen
	@$(STACK_ENV); scripts/run.sh

## test: the lints (formatting, clippy, which also holds the code to `rust-version`), then
## start the local stack if needed, install the browser test's Chromium, run every test
test: lint stack-up chromium
	@$(STACK_ENV); \
	export TEST_KAFKA_BROKERS=$$KAFKA_BROKERS TEST_DATABASE_URL=$$POSTGRES_DSN; \
	cargo test --workspace
	@# The short abuse run, the OpenTelemetry SDK run and the short fault run (see README,
	@# Reliability and OpenTelemetry).
	cargo build --bins -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen
	@$(STACK_ENV); CHAOS_PROFILE=debug ABUSE_EXAMPLES=25 scripts/abuse.sh
	@$(STACK_ENV); CHAOS_PROFILE=debug scripts/otel.sh
	@$(STACK_ENV); CHAOS_PROFILE=debug CHAOS_SECONDS=100 CHAOS_RATE=50 CHAOS_PG_DOWN_SECS=20 \
		scripts/chaos.sh ci

build-deps:
	@scripts/build-deps.sh

stack-up: build-deps
	@$(STACK) up

stack-down:
	@$(STACK) down

chromium:
	@scripts/chromium.sh

migrate:
	@$(STACK_ENV); cargo run --quiet -p admin --bin streamlens-admin -- migrate

build: build-deps
	cargo build --workspace --all-targets

lint: build-deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

## chaos: fault runs against an oracle, each fault alone and then all together (about 25 min)
chaos: stack-up
	cargo build --release -p ingestion-api -p metrics-processor -p admin -p loadgen
	@$(STACK_ENV); scripts/chaos.sh

## abuse: fuzz both APIs from their OpenAPI documents, malformed bodies, poison records
abuse: stack-up
	cargo build --release -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen
	@$(STACK_ENV); scripts/abuse.sh

## bench: end-to-end load through all three services, with raw broker rates from the same run
bench: stack-up
	cargo build --release -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen
	@$(STACK_ENV); scripts/bench.sh

## soak: the end-to-end benchmark for ten minutes at a steady rate: memory and lag must stay flat
soak: stack-up
	cargo build --release -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen
	@$(STACK_ENV); BENCH_SECONDS=$${SOAK_SECONDS:-600} BENCH_RATE=$${SOAK_RATE:-2000} BENCH_RAW_EVENTS=200000 scripts/bench.sh

## bench-ingest: the ingestion API against a raw librdkafka producer
bench-ingest: stack-up
	cargo build --release -p ingestion-api -p loadgen -p admin
	@$(STACK_ENV); scripts/bench-ingest.sh

## bench-processor: the processor against a raw consumer on the same preloaded data
bench-processor: stack-up
	cargo build --release -p metrics-processor -p loadgen
	@$(STACK_ENV); scripts/bench-processor.sh
	@# Freed memory straight back to the OS, so RSS measures what the join state holds.
	MIMALLOC_PURGE_DELAY=0 cargo run --release -q -p metrics-processor --example join_state

## bench-replay: an hour of traffic at 2,000 events/s, then the processor killed and restarted:
## how long until it is ready and caught up, and how much it reads again
bench-replay: stack-up
	cargo build --release -p metrics-processor -p ingestion-api -p admin -p loadgen
	@$(STACK_ENV); scripts/bench-replay.sh

## bench-reprice: re-pricing 30 days of one tenant's windows
bench-reprice: stack-up
	cargo build --release -p loadgen -p admin
	@$(STACK_ENV); scripts/bench-reprice.sh

## bench-alerts: time from a minute's end to its alert webhook, over ten minutes
bench-alerts: stack-up
	@$(STACK_ENV); export TEST_KAFKA_BROKERS=$$KAFKA_BROKERS TEST_DATABASE_URL=$$POSTGRES_DSN; \
	cargo test -p metrics-api --test api -- --ignored --nocapture time_from_window_end_to_webhook

## bench-query: the query API on a table of 10M generated windows
bench-query: stack-up
	cargo build --release -p metrics-api -p loadgen -p admin -p ingestion-api -p metrics-processor
	@$(STACK_ENV); scripts/bench-query.sh
