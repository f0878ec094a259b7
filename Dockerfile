# logferry as a drop-in for the Fluent Bit image: binary at /fluent-bit/bin/fluent-bit, stock
# parsers at /fluent-bit/etc/parsers.conf (charts reference both paths).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin logferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/logferry /fluent-bit/bin/fluent-bit
COPY conf/parsers.conf /fluent-bit/etc/parsers.conf
EXPOSE 2020
ENTRYPOINT ["/fluent-bit/bin/fluent-bit"]
CMD ["-c", "/fluent-bit/etc/fluent-bit.conf"]
