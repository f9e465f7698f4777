# syntax=docker/dockerfile:1
#
# keyrotor operator image: a static (musl) binary on a distroless base that has no
# shell and no package manager, running as the unprivileged user 65532.
#
#   docker build -t <registry>/keyrotor:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/keyrotor:0.1.0 --push .
#
# Each platform is compiled natively (under emulation for a foreign one), so no cross
# toolchain is needed.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-trixie AS build
# musl-tools: the C compiler ring's assembly needs for a musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The target triple of the platform being built (amd64 or arm64).
RUN case "$(uname -m)" in \
      x86_64) echo x86_64-unknown-linux-musl ;; \
      aarch64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture $(uname -m)" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
# .dockerignore lets in only what the build needs (Cargo.toml, Cargo.lock, src/, benches/).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin keyrotor --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/keyrotor" /keyrotor

# distroless/static: CA certificates, tzdata and a passwd entry for `nonroot` (65532),
# nothing else. The binary is static, so no libc is needed.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /keyrotor /keyrotor
USER 65532:65532
# Metrics and health on every interface of the pod (the binary's own default is loopback).
ENV KEYROTOR_METRICS_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/keyrotor"]
CMD ["run"]
