# Redis from the host's Debian redis-server package, built without a registry
# by deploy/offline/build-images.sh: the binaries, the shared libraries ldd
# names, /bin/sh for the two wrappers below, and user redis (999) owning
# /data as in the official image, so that a fresh volume is writable.
#
# On the host network every container shares the host's ports, so the port
# is not redis-server's default: REDIS_PORT (default 6379) and REDIS_BIND
# (default 127.0.0.1) are appended to the compose file's own command by the
# entrypoint, and the redis-cli wrapper talks to REDIS_PORT, so that the
# compose file's command and healthcheck run unchanged.
FROM scratch
COPY rootfs/ /
COPY --chown=999:999 data/ /data/
ENV PATH=/usr/local/bin:/usr/bin:/bin
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/offline-entrypoint"]
CMD ["redis-server"]
