# One image per service from one build: `docker build --target producer .` or `--target consumer`.
# docker-compose.yml selects the target per service.
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (dependencies
# in their own cached layer, then the workspace) -> producer / consumer (distroless, non-root).

FROM rust:1.95.0-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

# Reduces the workspace to a recipe of its dependencies; the recipe only changes when a manifest
# or Cargo.lock does, so the cook layer below stays cached across source edits.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p kinesis-producer -p kinesis-consumer --bins

# glibc, libgcc and CA certificates, no shell; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS producer
COPY --from=builder /app/target/release/producer /usr/local/bin/producer
ENTRYPOINT ["/usr/local/bin/producer"]

FROM runtime AS consumer
COPY --from=builder /app/target/release/consumer /usr/local/bin/consumer
ENTRYPOINT ["/usr/local/bin/consumer"]
