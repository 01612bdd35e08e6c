# zoogate container image: built with the same scripts as the README, run as a non-root user.
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN ./scripts/install-deps.sh build && ./scripts/build.sh -DZOOGATE_BUILD_TESTS=OFF

FROM debian:12-slim
# Runtime libraries of the build's -dev packages.
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates libssl3 zlib1g libyaml-cpp0.7 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/zoogate zoogate
COPY --from=build /src/build/proxy/zoogate /usr/local/bin/zoogate
USER zoogate
WORKDIR /var/lib/zoogate
ENTRYPOINT ["/usr/local/bin/zoogate"]
CMD ["--help"]
