# Multi-stage: build with the Rust toolchain, run on a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the criterion benches: the manifest does not parse without them.
COPY benches ./benches
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gantry \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gantry --create-home gantry \
    && mkdir -p /var/lib/gantry/data \
    && chown gantry:gantry /var/lib/gantry/data
COPY --from=build /src/target/release/gantry /usr/local/bin/gantry
COPY config/gantry.toml /etc/gantry/gantry.toml
WORKDIR /var/lib/gantry
USER 10001:10001
# The shipped config listens on loopback; inside a container listen on every interface.
ENV GANTRY_CONFIG=/etc/gantry/gantry.toml \
    GANTRY__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/var/lib/gantry/data"]
ENTRYPOINT ["/usr/local/bin/gantry", "serve"]
