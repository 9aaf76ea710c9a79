# The dt-users image: one binary, `dt-users`, that serves the API and runs every other role
# (`migrate`, `worker`, `relay`, `consume`, `beat`, `kafka create-topics`); compose.yaml runs
# them side by side. Build with `docker build -t dt-users .`.
#
# Nothing but the binary is copied into the image: the email templates and the SQL
# migrations are compiled into it (`include_str!` in crates/dt-users/src/email/render.rs and
# crates/store/src/migrations.rs), as is the list of common passwords.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka is built from source by rdkafka-sys with its own `configure` and make (not
# cmake). The `ssl` feature links OpenSSL (TLS and SASL PLAIN/SCRAM; GSSAPI is not built, so
# no libsasl2) and the default `libz` feature links zlib; pkg-config finds both.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# The dependencies first, built against stub sources: this layer is rebuilt only when a
# manifest or Cargo.lock changes, not at every change of the code.
COPY Cargo.toml Cargo.lock ./
COPY crates/domain/Cargo.toml crates/domain/
COPY crates/store/Cargo.toml crates/store/
COPY crates/dt-users/Cargo.toml crates/dt-users/
COPY bench/harness/Cargo.toml bench/harness/
RUN for crate in crates/domain crates/store crates/dt-users bench/harness; do \
      mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
    done \
 && mkdir -p crates/dt-users/benches \
 && echo 'fn main() {}' > crates/dt-users/src/main.rs \
 && echo 'fn main() {}' > crates/dt-users/benches/micro.rs \
 && cargo build --release --locked -p dt-users --bin dt-users \
 && rm -rf crates bench

# The real build. The sources keep the times they had in the build context, which may be
# older than the stubs' build: touching them makes cargo rebuild the workspace's crates.
COPY crates crates
COPY bench/harness bench/harness
RUN find crates bench -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p dt-users --bin dt-users \
 && cp target/release/dt-users /usr/local/bin/dt-users

FROM debian:${DEBIAN_RELEASE}-slim
# Run-time libraries of the binary (`ldd`): libssl3 for the Kafka client (zlib and glibc are
# in the base image); CA certificates for Kafka over TLS, which uses the system's CAs.
# Versions are not pinned: their security updates come with the distribution's packages.
# The service runs as an unprivileged user, whose home is the working directory below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/dt-users --create-home \
      --shell /usr/sbin/nologin dt-users

COPY --from=build /usr/local/bin/dt-users /usr/local/bin/dt-users
# The health probe. The image is Debian slim rather than distroless because the binary has no
# command that probes its own health and distroless has no shell, curl or wget; with bash
# already here, the probe is a 20-line script and adds no package.
COPY docker/dt-users-probe /usr/local/bin/dt-users-probe

# By number, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
# Without DT_USERS_DATABASE_URL the embedded default keeps its SQLite files and its generated
# key here (mount a volume to keep them); compose.yaml configures MySQL, Redis and Kafka.
WORKDIR /var/lib/dt-users
ENV DT_USERS_DATA_DIR=/var/lib/dt-users

EXPOSE 8000
# Liveness of `serve` on its default port; compose.yaml gives the background roles, which
# listen on ports of their own, probes of their own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["dt-users-probe", "8000", "/health/live"]
ENTRYPOINT ["dt-users"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
