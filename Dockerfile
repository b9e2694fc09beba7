# Hearth: multi-stage image. Build: `docker build -t hearth .`
# Run:   `docker run --rm -p 8080:8080 hearth`
# Operators mount their own configuration over /etc/hearth, e.g.
#   docker run -v /srv/hearth/config:/etc/hearth:ro -p 8080:8080 hearth
# (the directory must contain default.toml, or pass another --config path).

FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources, so this layer is cached until
# Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked -p hearth \
 && rm -rf src

# The real sources. config/ is compiled in (the built-in default config).
COPY config config
COPY src src
# COPY keeps the files' old modification times: make sure cargo rebuilds.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p hearth

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hearth \
 && useradd --system --uid 10001 --gid hearth --home-dir /var/lib/hearth \
      --no-create-home --shell /usr/sbin/nologin hearth
COPY --from=builder /src/target/release/hearth /usr/local/bin/hearth
COPY config/default.toml /etc/hearth/default.toml
RUN mkdir -p /var/lib/hearth/data && chown -R hearth:hearth /var/lib/hearth
WORKDIR /var/lib/hearth
USER hearth
ENV HEARTH_LISTEN=0.0.0.0:8080 HEARTH_DATA_DIR=/var/lib/hearth/data
EXPOSE 8080
# Assumes the port above; change both if you change HEARTH_LISTEN.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["hearth"]
CMD ["serve", "--config", "/etc/hearth/default.toml"]
