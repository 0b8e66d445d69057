#!/usr/bin/env bash
# Builds, without any image registry, the images that docker-compose.offline.yml
# runs:
#   certmail:offline             worker, enqueue, dlq, api (static Go binaries built
#                                here, FROM scratch, host CA certificates, user 65532)
#   certmail-simulators:offline  the provider simulators (cmd/simulators)
#   certmail-redis:offline       Redis from this host's Debian redis-server package
#
#   deploy/offline/build-images.sh            # needs go, docker, redis-server, ldd
#
# Uses the legacy builder (DOCKER_BUILDKIT=0): nothing is pulled, every
# Dockerfile starts FROM scratch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export DOCKER_BUILDKIT=0

for c in go docker ldd; do
  command -v "$c" >/dev/null || { echo "build-images: $c not found" >&2; exit 1; }
done
redis_bin=$(command -v redis-server || true)
[[ -n "$redis_bin" ]] || { echo "build-images: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
cli_bin=$(command -v redis-cli)
ca=/etc/ssl/certs/ca-certificates.crt
[[ -s "$ca" ]] || { echo "build-images: $ca missing (apt-get install ca-certificates)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# passwd/group for scratch images: root, nonroot (65532, as distroless).
mkdir -p "$ctx/go/etc/ssl/certs" "$ctx/go/bin"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/go/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/go/etc/group"
cp "$ca" "$ctx/go/etc/ssl/certs/ca-certificates.crt"

echo "build-images: go build (static)"
(cd "$repo" && CGO_ENABLED=0 GOOS=linux go build -ldflags="-s -w" -o "$ctx/go/bin/" \
  ./cmd/worker ./cmd/enqueue ./cmd/dlq ./cmd/api ./cmd/simulators)

docker build -q -t certmail:offline -f "$here/worker.Dockerfile" "$ctx/go"
docker build -q -t certmail-simulators:offline -f "$here/simulators.Dockerfile" "$ctx/go"

# Redis: the real binaries (redis-server is a symlink to redis-check-rdb in
# Debian; the program picks its mode from argv[0]), their libraries, and
# dash as /bin/sh for the wrappers.
r="$ctx/redis/rootfs"
mkdir -p "$r/usr/local/bin" "$r/usr/local/lib/redis" "$r/bin" "$r/etc" "$r/tmp" "$ctx/redis/data"
chmod 1777 "$r/tmp"
cp -L "$redis_bin" "$r/usr/local/bin/redis-server"
ln -s redis-server "$r/usr/local/bin/redis-sentinel"
cp -L "$cli_bin" "$r/usr/local/lib/redis/redis-cli"
cp "$here/redis-cli" "$here/offline-entrypoint" "$r/usr/local/bin/"
cp -L /bin/sh "$r/bin/sh"
for lib in $(ldd "$redis_bin" "$cli_bin" /bin/sh | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
  mkdir -p "$r$(dirname "$lib")"
  cp -L "$lib" "$r$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nredis:x:999:999:redis:/data:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nredis:x:999:\n' >"$r/etc/group"
docker build -q -t certmail-redis:offline -f "$here/redis.Dockerfile" "$ctx/redis"

docker run --rm --entrypoint redis-server certmail-redis:offline --version
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^certmail(-redis|-simulators)?:offline '
