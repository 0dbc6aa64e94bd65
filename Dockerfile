# One image with every StreamLens binary; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ingestion-api -p metrics-processor -p metrics-api -p admin -p loadgen \
 && mkdir /out \
 && cp target/release/ingestion-api target/release/metrics-processor target/release/metrics-api target/release/streamlens-admin \
       target/release/streamlens-loadgen /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 streamlens
COPY --from=build /out/ /usr/local/bin/
USER streamlens
ENV LOG_FORMAT=json
