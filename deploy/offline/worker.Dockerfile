# The worker image (the API too: entrypoint /usr/local/bin/api) built without a registry (deploy/offline/build-images.sh):
# the same contents as the multi-stage Dockerfile's distroless image, from
# files the script stages: static binaries built by Go on the host, the
# host's CA certificates, and a passwd/group naming the non-root user 65532.
FROM scratch
COPY etc/ /etc/
COPY bin/worker bin/enqueue bin/dlq bin/api /usr/local/bin/
USER 65532:65532
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]
