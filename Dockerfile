# logferry as a drop-in for the Fluent Bit image: the binary at /fluent-bit/bin/fluent-bit, the
# stock parsers at /fluent-bit/etc/parsers.conf and a default config at
# /fluent-bit/etc/fluent-bit.conf (conf/fluent-bit.conf: tail /var/log/containers/*.log → stdout).
# Charts reference these paths and mount their own fluent-bit.conf over the default; ECS FireLens
# mounts its generated config there too, and task definitions may include
# /fluent-bit/configs/output-metrics-healthcheck.conf (HTTP API on 2020 for the health check).
#   docker build -t logferry . && docker run -v /var/log:/var/log logferry

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin logferry

FROM debian:bookworm-slim
# ca-certificates unpinned on purpose: it must follow the distribution's security updates.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/logferry /fluent-bit/bin/fluent-bit
# `logferry healthcheck` as an exec probe, under either name.
RUN ln -s /fluent-bit/bin/fluent-bit /usr/local/bin/logferry
COPY conf/parsers.conf conf/fluent-bit.conf /fluent-bit/etc/
COPY conf/output-metrics-healthcheck.conf /fluent-bit/configs/
EXPOSE 2020
ENTRYPOINT ["/fluent-bit/bin/fluent-bit"]
CMD ["-c", "/fluent-bit/etc/fluent-bit.conf"]
