# Test-only stand-in for the prom/prometheus image that docker-compose.yml
# names. This machine reaches Debian's archive but no image registry, so
# tests/compose_e2e_test.py builds this from Debian's `prometheus` package
# (2.42, older than the tag) and tags it with the compose file's image
# name. It mirrors what the compose file relies on in the upstream image:
# the prometheus binary as ENTRYPOINT, user nobody, /prometheus owned by it
# (a named volume there starts out writable), and wget for the health check.
# Users get the real image from Docker Hub; nothing of this ships.
ARG DEBIAN_SLIM_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_SLIM_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      prometheus wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nobody -g nogroup /prometheus /etc/prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus"]
