#!/usr/bin/env bash
# Runs the deployment for real (issue 13): starts a dockerd of its own, builds
# the images offline (deploy/offline/build-images.sh), brings up
# docker-compose.yml with deploy/offline/docker-compose.offline.yml on the
# host network (loopback only), and proves it works end to end; then the
# same with docker-compose.ha.yml when the repository has it. Always tears
# everything down, dockerd included.
#
#   bash .ci/compose.sh            # as root; installs docker.io / docker-compose if missing
#
# Artifacts (dockerd log, container logs) go to $CERTMAIL_ARTIFACTS_DIR/compose.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
art="${CERTMAIL_ARTIFACTS_DIR:-$repo/artifacts}/compose"
mkdir -p "$art"
t0=$(date +%s)
say() { printf -- '- %s (%ss)\n' "$*" $(($(date +%s) - t0)); }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v redis-server >/dev/null || need+=(redis-server)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
docker-compose version --short

tmp=$(mktemp -d /tmp/certmail-compose.XXXXXX)
dpid=""
projects=()
cleanup() {
  local rc=$?
  set +e
  for p in "${projects[@]+"${projects[@]}"}"; do
    docker-compose -p "$p" ${compose_args:-} logs --no-color >"$art/$p.log" 2>&1
    docker-compose -p "$p" ${compose_args:-} down -v --timeout 10 >/dev/null 2>&1
  done
  if [[ -n "$dpid" ]]; then
    kill "$dpid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$dpid" 2>/dev/null
  fi
  grep -qs " $tmp/" /proc/mounts && awk -v d="$tmp/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
  rm -rf "$tmp"
  echo "compose: $(($(date +%s) - t0))s, exit $rc"
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT # timeout(1) from .ci/run: clean up all the same

fail() {
  echo "COMPOSE FAIL: $*"
  for p in "${projects[@]+"${projects[@]}"}"; do
    echo "--- $p: docker-compose ps"; docker-compose -p "$p" ${compose_args:-} ps 2>&1
    echo "--- $p: logs (tail)"; docker-compose -p "$p" ${compose_args:-} logs --no-color --tail 40 2>&1
  done
  exit 1
}

# dockerd of our own: its own socket, data and exec roots under $tmp, no
# default bridge and no iptables rules (every container uses the host network).
export DOCKER_HOST="unix://$tmp/docker.sock"
start_dockerd() {
  dockerd --data-root "$tmp/data" --exec-root "$tmp/exec" --pidfile "$tmp/dockerd.pid" \
    -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-masq=false --storage-driver "$1" \
    >>"$art/dockerd.log" 2>&1 &
  dpid=$!
  for _ in $(seq 180); do # 90 s: dockerd took 25 s to answer on a loaded machine
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$dpid" 2>/dev/null || break
    sleep 0.5
  done
  kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null; dpid=""
  return 1
}
start_dockerd overlay2 || { echo "overlay2 failed, trying vfs"; start_dockerd vfs; } || fail "dockerd did not start (see $art/dockerd.log)"
say "dockerd $(docker info --format '{{.ServerVersion}} {{.Driver}}')"

deploy/offline/build-images.sh
say "images built"

# Host-side tools: the enqueue binary, and redis-cli for the checks.
mkdir -p "$tmp/bin"
go build -o "$tmp/bin/" ./cmd/enqueue
enqueue() { "$tmp/bin/enqueue" "$@"; }

# The project directory: the repository's own files (symlinks) plus secret
# files made here, so a user's ./secrets is never touched.
proj="$tmp/project"
mkdir -p "$proj/secrets"
for f in "$repo"/* "$repo"/.[!.]*; do
  [[ "$(basename "$f")" == secrets || "$(basename "$f")" == .git ]] && continue
  ln -s "$f" "$proj/"
done
opensrs_key=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
digicert_key=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
dash_pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s' "$opensrs_key" >"$proj/secrets/opensrs_api_key"
printf '%s' "$digicert_key" >"$proj/secrets/digicert_api_key"
printf '%s' "$dash_pass" >"$proj/secrets/dashboard_password"
api_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'compose-ci:%s\n' "$api_token" >"$proj/secrets/api_tokens"
chmod 0444 "$proj"/secrets/*
export OPENSRS_USERNAME=ci-reseller DASHBOARD_USER=ops

export CERTMAIL_OFFLINE_REDIS_PORT=16379 CERTMAIL_OFFLINE_HTTP_PORT=18080 \
  CERTMAIL_OFFLINE_OPENSRS_PORT=18081 CERTMAIL_OFFLINE_DIGICERT_PORT=18082 CERTMAIL_OFFLINE_SIM_ADMIN_PORT=18083 \
  CERTMAIL_OFFLINE_API_PORT=18084
# The HA override's fixed ports too: the replica 16380, the Sentinels 26379-26381.
for port in 16379 18080 18081 18082 18083 18084 16380 26379 26380 26381; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "127.0.0.1:$port is already in use"; fi
done
http="http://127.0.0.1:$CERTMAIL_OFFLINE_HTTP_PORT"
sim="http://127.0.0.1:$CERTMAIL_OFFLINE_SIM_ADMIN_PORT"
apiurl="http://127.0.0.1:$CERTMAIL_OFFLINE_API_PORT"

# compose_up PROJECT FILE: up -d with the offline override, then wait until
# every container of the project is healthy (or running, without a
# healthcheck).
compose_up() { # compose_up PROJECT FILE OVERRIDE
  local p=$1 f=$2 ov=$3
  projects+=("$p")
  # docker-compose v1 refuses published ports on the host network and cannot
  # drop a list in an override: run the merged configuration with those ports
  # removed, once checked to be published on loopback only.
  docker-compose -p "$p" --project-directory "$proj" -f "$proj/$f" -f "$proj/$ov" \
    config >"$tmp/$p.merged.yml" || fail "$p: docker-compose config failed"
  python3 - "$tmp/$p.merged.yml" <<'PY' || fail "$p: the merged configuration is not loopback-only"
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
for name, svc in cfg["services"].items():
    assert svc.get("network_mode") == "host", f"{name}: not on the host network"
    for port in svc.pop("ports", []):
        ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert ip == "127.0.0.1", f"{name}: port {port} is not published on 127.0.0.1 only"
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
PY
  cp "$tmp/$p.merged.yml" "$art/$p.merged.yml"
  compose_args="--project-directory $proj -f $tmp/$p.merged.yml"
  docker-compose -p "$p" $compose_args up -d --no-build >"$art/$p-up.log" 2>&1 ||
    { cat "$art/$p-up.log"; fail "$p: docker-compose up failed"; }
  wait_healthy "$p" 180
  say "$p: every container healthy"
}
dc() { docker-compose -p "$1" $compose_args "${@:2}"; }

wait_healthy() { # wait_healthy PROJECT SECONDS
  local deadline=$(($(date +%s) + $2)) ids state bad
  while :; do
    ids=$(dc "$1" ps -q)
    [[ -n "$ids" ]] || fail "$1: no containers"
    bad=""
    for id in $ids; do
      state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
      case "$state" in
      *" running healthy" | *" running none") ;;
      *) bad="$bad; $state" ;;
      esac
    done
    [[ -z "$bad" ]] && return 0
    (($(date +%s) < deadline)) || fail "$1: not healthy after $2 s:$bad"
    sleep 1
  done
}

state_of() { enqueue status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
wait_state() { # wait_state ID STATE SECONDS
  local st=""
  for _ in $(seq $(($3 * 2))); do
    st=$(state_of "$1" 2>/dev/null || true)
    [[ "$st" == "$2" ]] && return 0
    sleep 0.5
  done
  fail "task $1 is '$st', want $2"
}
sim_saw() { # sim_saw PROVIDER ORDER STATUS: the simulator answered STATUS to a request for ORDER
  curl -fsS "$sim/requests" | python3 -c '
import json, sys
p, order, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
rs = json.load(sys.stdin)[p]
sys.exit(0 if any(r["order_id"] == order and r["status"] == status for r in rs) else 1)' "$1" "$2" "$3"
}
process_one() { # process_one PROVIDER ORDER: enqueue, see it completed and the simulator's 2xx
  local id
  if [[ $1 == opensrs ]]; then
    id=$(enqueue opensrs --order-id "$2" --reference "compose-$2")
  else
    id=$(enqueue digicert --order-id "$2" --approval-email example.com=admin@example.com --locale en --reference "compose-$2")
  fi
  wait_state "$id" completed 60
  local want=200; [[ $1 == digicert ]] && want=204
  sim_saw "$1" "$2" "$want" || fail "simulator has no $want for $1 order $2"
  echo "$id"
}

single() {
  local p=certmail-ci
  compose_up "$p" docker-compose.yml deploy/offline/docker-compose.offline.yml
  local rport=$CERTMAIL_OFFLINE_REDIS_PORT
  export REDIS_URL="redis://127.0.0.1:$rport/0"

  # Redis runs with the compose file's settings.
  [[ $(redis-cli -p "$rport" config get appendonly | tail -1) == yes ]] || fail "redis: appendonly is not yes"
  [[ $(redis-cli -p "$rport" config get maxmemory-policy | tail -1) == noeviction ]] || fail "redis: maxmemory-policy is not noeviction"
  say "redis: appendonly yes, noeviction"

  # Both providers configured from the secret files, both reach the simulators.
  local osrs_id dc_id
  osrs_id=$(process_one opensrs 1001)
  dc_id=$(process_one digicert 2001)
  say "tasks processed by the worker container: opensrs $osrs_id, digicert $dc_id"

  # The API container: docker-compose.yml's entrypoint, tokens secret and
  # healthcheck (the override changes only the healthcheck's port; it passed
  # above), then a curl POST with the secret file's token is processed.
  python3 - docker-compose.yml "$tmp/$p.merged.yml" "$CERTMAIL_OFFLINE_API_PORT" <<'PY' || fail "api: the override changes more than the healthcheck's port"
import sys, yaml
base = yaml.safe_load(open(sys.argv[1]))["services"]["api"]
got = yaml.safe_load(open(sys.argv[2]))["services"]["api"]
want = [x.replace("127.0.0.1:8081", "127.0.0.1:" + sys.argv[3]) for x in base["healthcheck"]["test"]]
assert got["healthcheck"]["test"] == want, (got["healthcheck"]["test"], want)
assert got["entrypoint"] == base["entrypoint"], got["entrypoint"]
assert got["environment"]["API_TOKENS_FILE"] == base["environment"]["API_TOKENS_FILE"]
assert [s if isinstance(s, str) else s["source"] for s in got["secrets"]] == base["secrets"], got["secrets"]
PY
  local code api_id
  code=$(curl -sS -o "$tmp/api-out" -w '%{http_code}' -H "Authorization: Bearer $api_token" -H 'Content-Type: application/json' \
    -d '{"provider":"digicert","order_id":"2077","reference":"compose-api"}' "$apiurl/v1/resends") || code=none
  [[ $code == 202 ]] || fail "api: POST /v1/resends with the tokens file's token answered $code: $(cat "$tmp/api-out")"
  api_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$tmp/api-out")
  wait_state "$api_id" completed 60
  sim_saw digicert 2077 204 || fail "simulator has no 204 for the API's digicert order 2077"
  enqueue status "$api_id" --json | python3 -c 'import json,sys; assert json.load(sys.stdin)["payload"]["producer"] == "compose-ci"' ||
    fail "api: task $api_id does not name its producer compose-ci"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d '{}' "$apiurl/v1/resends") || code=none
  [[ $code == 401 ]] || fail "api: POST without a token answered $code, want 401"
  say "api container healthy; a curl POST with the token was processed ($api_id, producer compose-ci), 401 without"

  # The ops surface.
  curl -fsS "$http/readyz" >/dev/null || fail "/readyz is not 200"
  curl -fsS "$http/metrics" >"$art/$p-metrics.txt" || fail "/metrics is not 200"
  grep -q '^certmail_attempts_total{.*outcome="succeeded"' "$art/$p-metrics.txt" || fail "/metrics has no succeeded attempts"
  code=$(curl -s -o /dev/null -w '%{http_code}' "$http/dashboard/")
  [[ $code == 401 ]] || fail "dashboard without credentials answered $code, want 401"
  code=$(curl -s -o /dev/null -w '%{http_code}' -u "ops:$dash_pass" "$http/dashboard/")
  [[ $code == 200 ]] || fail "dashboard with the secret file's password answered $code, want 200"
  say "/readyz 200, /metrics counts the attempts, dashboard 401 without and 200 with credentials"

  # AOF: kill Redis without a chance to save an RDB, start it again, and the
  # tasks' state and outcomes are still there.
  sleep 2 # appendfsync everysec
  local rid
  rid=$(dc "$p" ps -q redis)
  docker kill -s KILL "$rid" >/dev/null
  docker start "$rid" >/dev/null
  wait_healthy "$p" 120
  [[ $(state_of "$osrs_id") == completed ]] || fail "after the Redis kill, task $osrs_id is not completed: AOF lost it"
  enqueue status "$dc_id" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["state"] == "completed" and [a["outcome"] for a in s["attempts"]] == ["succeeded"], s' ||
    fail "after the Redis kill, task $dc_id lost its state or attempts"
  say "redis killed (-9) and started: AOF kept both tasks and their attempts"
  for _ in $(seq 60); do curl -fsS "$http/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
  process_one opensrs 1005 >/dev/null
  say "worker reconnected: a task enqueued after the Redis restart completed"

  dc "$p" logs --no-color >"$art/$p.log" 2>&1 || true
  dc "$p" down -v --timeout 30 >>"$art/$p-up.log" 2>&1 || fail "$p: down -v failed"
  [[ -z $(docker volume ls -q --filter "label=com.docker.compose.project=$p") ]] || fail "$p: volumes left after down -v"
  local keep=() q
  for q in "${projects[@]}"; do [[ $q == "$p" ]] || keep+=("$q"); done
  projects=("${keep[@]}")
  say "$p: down -v"
}

# The HA variant (docker-compose.ha.yml: a primary, a replica, three
# Sentinels; the worker's REDIS_URL is redis-sentinel://h1:p1,h2:p2,h3:p3/DB?master=NAME).
# Its host-network override names each Redis container's port in REDIS_PORT,
# as docker-compose.offline.yml does, which is how the primary's container is
# found from the Sentinels' answer.
ha() {
  local p=certmail-ci-ha ov=deploy/offline/docker-compose.ha.offline.yml
  [[ -f $ov ]] || fail "docker-compose.ha.yml exists but $ov does not: write its host-network override (README, Deploy)"
  # The override restates the Redis commands and the Sentinels' config only
  # for their addresses: everything else must be docker-compose.ha.yml's.
  python3 - docker-compose.ha.yml "$ov" <<'PY' || fail "HA: $ov differs from docker-compose.ha.yml in more than addresses"
import re, sys, yaml
base = yaml.safe_load(open(sys.argv[1]))["services"]
over = yaml.safe_load(open(sys.argv[2]))["services"]
names = {n for n, s in base.items() if str(s.get("image", "")).startswith("redis")}
for n in ("redis-primary", "redis-replica"):
    b, o = list(base[n]["command"]), list(over[n]["command"])
    want = ["127.0.0.1" if x in names else x for x in b]
    if "--replicaof" in want:  # the primary's port on the host network
        i = want.index("--replicaof") + 2
        want[i] = "16379"
    assert o == want, (n, o, want)
def settings(script):
    out = {}
    for m in re.finditer(r"sentinel (monitor|down-after-milliseconds|parallel-syncs|failover-timeout) (\S+) ([^'\"]+)", script):
        out[m.group(1)] = (m.group(2), m.group(3).split()[-1])
    return out
b = settings(" ".join(base["sentinel-1"]["command"]))
o = settings(" ".join(over["sentinel-1"]["command"]))
assert b.keys() == o.keys(), (b, o)
for k in b:
    if k != "failover-timeout":  # shorter in CI: a failed election is retried within the check's minute
        assert b[k] == o[k], (k, b[k], o[k])
PY
  compose_up "$p" docker-compose.ha.yml "$ov"
  # The worker's Redis URL, its Sentinels and master name, and which service
  # listens on which port, all from the merged configuration.
  python3 - "$tmp/$p.merged.yml" >"$tmp/ha.env" <<'PY'
import sys, yaml, urllib.parse
cfg = yaml.safe_load(open(sys.argv[1]))["services"]
url = next(s["environment"]["REDIS_URL"] for s in cfg.values() if str(s.get("environment", {}).get("REDIS_URL", "")).startswith("redis-sentinel://"))
u = urllib.parse.urlsplit(url)
hosts = u.netloc.rsplit("@", 1)[-1].split(",")
master = urllib.parse.parse_qs(u.query)["master"][0]
print(f"ha_url='{url}'")
print(f"ha_master='{master}'")
print("ha_sentinels='" + " ".join(h.rsplit(":", 1)[1] for h in hosts) + "'")
for name, s in cfg.items():
    port = s.get("environment", {}).get("REDIS_PORT")
    if port:
        print(f"ha_port_{port}='{name}'")
PY
  # shellcheck disable=SC1091
  source "$tmp/ha.env"
  export REDIS_URL=$ha_url
  local sport=${ha_sentinels%% *}
  primary_port() { redis-cli -p "$sport" sentinel get-master-addr-by-name "$ha_master" | tail -1; }
  local old new svc
  old=$(primary_port)
  svc=$(eval echo "\${ha_port_$old:-}")
  [[ -n "$svc" ]] || fail "HA: the Sentinels name port '$old' as primary, no service has REDIS_PORT=$old"
  say "HA: primary is $svc (127.0.0.1:$old), Sentinels on ${ha_sentinels// /, }"
  process_one opensrs 1001 >/dev/null
  say "HA: a task processed through the Sentinels"

  local wid wbefore
  wid=$(dc "$p" ps -q worker)
  wbefore=$(docker inspect -f '{{.State.StartedAt}} {{.RestartCount}}' "$wid")
  docker kill -s KILL "$(dc "$p" ps -q "$svc")" >/dev/null
  say "HA: primary container $svc killed"
  for _ in $(seq 120); do
    new=$(primary_port 2>/dev/null || true)
    [[ -n "$new" && "$new" != "$old" ]] && break
    sleep 0.5
  done
  [[ -n "$new" && "$new" != "$old" ]] || fail "HA: the Sentinels did not promote a replica within 60 s"
  say "HA: the Sentinels promoted $(eval echo "\${ha_port_$new:-127.0.0.1:$new}")"
  redis-cli -p "$new" info replication | grep -q '^role:master' || fail "HA: 127.0.0.1:$new is named primary but is not role:master"
  process_one opensrs 1007 >/dev/null
  [[ $(dc "$p" ps -q worker) == "$wid" && $(docker inspect -f '{{.State.StartedAt}} {{.RestartCount}}' "$wid") == "$wbefore" ]] ||
    fail "HA: the worker container was replaced or restarted during the failover"
  say "HA: a task enqueued after the kill was processed by the same worker container"
  curl -fsS "$http/readyz" >/dev/null || fail "HA: /readyz is not 200 after the failover"

  dc "$p" logs --no-color >"$art/$p.log" 2>&1 || true
  dc "$p" down -v --timeout 30 >>"$art/$p-up.log" 2>&1 || fail "$p: down -v failed"
  local keep=() q
  for q in "${projects[@]}"; do [[ $q == "$p" ]] || keep+=("$q"); done
  projects=("${keep[@]}")
  say "$p: down -v"
}

single
if [[ -f docker-compose.ha.yml ]]; then
  ha
else
  echo "HA: skipped, the repository has no docker-compose.ha.yml"
fi
echo "compose: all checks passed"
