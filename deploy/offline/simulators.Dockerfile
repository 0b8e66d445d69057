# The provider simulators (cmd/simulators) as their own image, built without
# a registry by deploy/offline/build-images.sh. Plain HTTP on loopback only:
# run it on the host network next to the worker.
FROM scratch
COPY etc/ /etc/
COPY bin/simulators /usr/local/bin/
USER 65532:65532
HEALTHCHECK --interval=2s --timeout=3s --retries=15 \
    CMD ["/usr/local/bin/simulators", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/simulators"]
