# cachet container image: a static-enough release build on Debian slim, run as non-root.
#
#   docker build -t cachet .
#   docker run --rm -p 127.0.0.1:6380:6380 cachet --listen 0.0.0.0:6380 --upstream redis://host.docker.internal:6379/0

FROM rust:1.95-slim-trixie AS build
# jemalloc, cachet's allocator, builds with make (the image has the C compiler).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, built against stub sources, so that source edits rebuild only
# cachet itself.
COPY Cargo.toml Cargo.lock ./
COPY check/Cargo.toml check/
COPY .cargo .cargo
# (Cargo reads every declared target's path in the workspace, so each gets a stub.)
RUN mkdir -p src benches check/src \
    && for f in src/main.rs check/src/main.rs benches/hot_paths.rs benches/paced.rs; do \
         echo 'fn main() {}' > "$f"; done \
    && touch src/lib.rs check/src/lib.rs \
    && cargo build --release --locked -p cachet --bin cachet
COPY . .
# The stubs' build is newer than the copied sources: touch the roots so that Cargo
# rebuilds cachet itself (and only it).
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked -p cachet --bin cachet \
    && strip target/release/cachet

FROM debian:trixie-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cachet
COPY --from=build /src/target/release/cachet /usr/local/bin/cachet
COPY config/docker.toml /etc/cachet/cachet.toml
USER 10001
EXPOSE 6380 9180
# Healthy while cachet's admin endpoint answers /healthz (bash's /dev/tcp speaks enough
# HTTP: the image needs no extra tools). Readiness (/readyz: the upstream answers) is
# for orchestrators that route traffic, not for restarting the container.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9180 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["cachet"]
CMD ["--config", "/etc/cachet/cachet.toml"]
