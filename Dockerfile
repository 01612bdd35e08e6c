# zoogate container image.
#
#   docker build -t zoogate .
#   docker run --read-only -p 8080:8080 -p 9090:9090 \
#     -v zoogate-cache:/var/cache/zoogate zoogate
#
# The build stage runs the README's own build: scripts/install-deps.sh build, then scripts/build.sh.
# The runtime stage carries the executable, the runtime packages of the libraries it loads (worked out
# by scripts/runtime-packages.sh from the executable itself), the system CA certificates and curl for
# the health check; it runs as an unprivileged user and writes nothing outside its volumes, so the root
# filesystem can be read-only. Deployment notes: docs/operations.md.

FROM debian:12 AS build
WORKDIR /src
# Only what the zoogate executable is built from (the tests are not built into the image).
COPY CMakeLists.txt ./
COPY scripts/ scripts/
COPY common/ common/
COPY cdr/ cdr/
COPY mtd/ mtd/
COPY config/ config/
COPY proxy/ proxy/
RUN ./scripts/install-deps.sh build && ./scripts/build.sh -DZOOGATE_BUILD_TESTS=OFF
RUN ./scripts/runtime-packages.sh build/proxy/zoogate > build/runtime-packages.txt

FROM debian:12-slim AS runtime
COPY --from=build /src/build/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive xargs -a /tmp/runtime-packages.txt \
         apt-get install -y -q --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --system --gid 10001 zoogate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/cache/zoogate --shell /usr/sbin/nologin zoogate \
    && mkdir -p /var/cache/zoogate /etc/zoogate \
    && chown 10001:10001 /var/cache/zoogate \
    && chmod 0750 /var/cache/zoogate
COPY --from=build /src/build/proxy/zoogate /usr/local/bin/zoogate
COPY deploy/docker/zoogate.yaml /etc/zoogate/zoogate.yaml

# The cache (artifacts, spool files, and the MTD secret and signing key zoogate creates when the
# configuration names none) and the configuration with the keys an operator provides.
VOLUME ["/var/cache/zoogate", "/etc/zoogate"]
WORKDIR /var/cache/zoogate
# Hub endpoint (HF_ENDPOINT), admin listener (/metrics /healthz /readyz), egress forward proxy.
EXPOSE 8080 9090 3128

# A numeric user, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
# SIGTERM drains: the listeners close, requests in flight finish, then zoogate exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", "--output", "/dev/null", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/zoogate", "serve", "--config", "/etc/zoogate/zoogate.yaml"]
