# syntax=docker/dockerfile:1

# certmail: the worker (default entrypoint) plus the enqueue and dlq tools
# and the HTTP enqueue API (--entrypoint /usr/local/bin/api).
#
#   docker build -t certmail .
#   docker run --rm certmail --help
#   docker run --rm --entrypoint /usr/local/bin/dlq certmail list
#
# See docker-compose.yml for a complete setup with Redis and secret files.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" \
        -o /out/ ./cmd/worker ./cmd/enqueue ./cmd/dlq ./cmd/api

# Static binaries on distroless: no shell, no package manager, CA
# certificates and tzdata included (the providers are HTTPS APIs), user
# nonroot (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /out/enqueue /out/dlq /out/api /usr/local/bin/
USER nonroot:nonroot
# The ops HTTP surface (/healthz, /readyz, /metrics, /dashboard/) must listen
# on all interfaces inside the container; publish it on loopback only.
ENV HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
# No curl in distroless: the worker checks its own /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]
