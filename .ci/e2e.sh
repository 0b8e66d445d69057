#!/usr/bin/env bash
# End-to-end check of the CLI contract with the real binaries against a real
# redis-server: worker (provider simulators, no sample tasks), enqueue, dlq.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
bin="$tmp/bin"
mkdir -p "$bin"
go build -o "$bin/" ./cmd/worker ./cmd/enqueue ./cmd/dlq ./cmd/api

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
rport=$(free_port); hport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
rpid=$!
wpid=""
apid=""
cleanup() { [[ -n "$wpid" ]] && kill "$wpid" 2>/dev/null; [[ -n "$apid" ]] && kill "$apid" 2>/dev/null; kill "$rpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
export REDIS_URL="redis://127.0.0.1:$rport/0"
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

checks=0
check() { checks=$((checks + 1)); echo "- $*"; }
fail() { echo "E2E FAIL: $*"; echo "e2e: $((checks - 1)) passed, 1 failed"; echo "--- worker log (tail)"; tail -n 30 "$tmp/worker.log" || true; exit 1; }
expect_code() { # expect_code WANT cmd...
  local want=$1; shift
  set +e; "$@" >"$tmp/out" 2>"$tmp/err"; local got=$?; set -e
  [[ $got -eq $want ]] || fail "$* exited $got, want $want; stderr: $(cat "$tmp/err")"
}
one_line_err() { [[ $(wc -l <"$tmp/err") -eq 1 ]] || fail "stderr is not one line: $(cat "$tmp/err")"; }

start_worker() {
  "$bin/worker" --demo --demo-samples=false --redis-url "$REDIS_URL" --http-addr "127.0.0.1:$hport" >>"$tmp/worker.out" 2>>"$tmp/worker.log" &
  wpid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$hport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$hport/readyz" >/dev/null || fail "worker never became ready"
}
start_worker

wait_state() { # wait_state ID STATE [SECONDS]
  for _ in $(seq $(( ${3:-30} * 5 ))); do
    st=$("$bin/enqueue" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [[ "$st" == "$2" ]] && return 0
    sleep 0.2
  done
  fail "task $1 state $st, want $2"
}

check "success"
expect_code 0 "$bin/enqueue" opensrs --order-id 1001 --reference e2e-ok
ok_id=$(cat "$tmp/out")
wait_state "$ok_id" completed
"$bin/enqueue" status "$ok_id" --json >"$tmp/status.json"
python3 - "$tmp/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for k in ("id","type","queue","state","retried","max_retry","last_error","payload","result","attempts"):
    assert k in s, k
assert s["type"] == "opensrs:resend_cert_email" and s["queue"] == "opensrs"
assert s["payload"] == {"order_id": "1001", "reference": "e2e-ok"}, s["payload"]
assert s["result"]["order_id"] == "1001"
assert [a["outcome"] for a in s["attempts"]] == ["succeeded"], s["attempts"]
PY

check "dedup inside the window"
expect_code 0 "$bin/enqueue" opensrs --order-id 1001 --reference e2e-ok
[[ $(cat "$tmp/out") == "$ok_id" ]] || fail "duplicate did not return the first ID"
grep -q "duplicate of $ok_id" "$tmp/err" || fail "no 'duplicate of' on stderr"

check "transient failures then success"
expect_code 0 "$bin/enqueue" opensrs --order-id 1002 --reference e2e-retry
rid=$(cat "$tmp/out")

check "permanent failure is dead-lettered, then replayed with a fresh budget"
expect_code 0 "$bin/enqueue" digicert --order-id 2003 --approval-email example.com=admin@example.com --locale en
dead_id=$(cat "$tmp/out")
wait_state "$dead_id" archived
expect_code 0 "$bin/dlq" list --json
python3 - "$tmp/out" "$dead_id" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))
d = [i for i in items if i["id"] == sys.argv[2]]
assert len(d) == 1, items
for k in ("id","type","queue","order_id","retried","last_error","last_failed_at","payload"):
    assert k in d[0], k
assert "not_found|order" in d[0]["last_error"], d[0]["last_error"]
assert d[0]["payload"]["order_id"] == "2003"
PY
expect_code 0 "$bin/dlq" replay "$dead_id"
read -r old new <"$tmp/out"
[[ "$old" == "$dead_id" && -n "$new" ]] || fail "replay printed '$(cat "$tmp/out")'"
wait_state "$new" archived

check "retried task recovered"
wait_state "$rid" completed

check "batch: valid lines enqueued, bad ones reported, exit 1"
printf '%s\n' '{"provider":"opensrs","order_id":"1101"}' '{"provider":"opensrs","order_id":"x"}' '{"provider":"digicert","order_id":"2101","locale":"en"}' >"$tmp/batch.jsonl"
expect_code 1 "$bin/enqueue" batch "$tmp/batch.jsonl"
[[ $(wc -l <"$tmp/out") -eq 3 ]] || fail "batch printed $(wc -l <"$tmp/out") lines"
sed -n 2p "$tmp/out" | grep -q '^line 2: order_id' || fail "batch line 2: $(sed -n 2p "$tmp/out")"

check "bad input: one line, exit 2, nothing enqueued"
# Count task hashes, not a queue: the worker moves tasks between states meanwhile.
ntasks() { redis-cli -p "$rport" --scan --pattern 'asynq:{*}:t:*' | wc -l; }
before=$(ntasks)
expect_code 2 "$bin/enqueue" opensrs --order-id 12ab; one_line_err; grep -q -- '--order-id' "$tmp/err" || fail "error does not name --order-id"
expect_code 2 "$bin/enqueue" opensrs --order-id 1 --nope; one_line_err
expect_code 2 "$bin/enqueue" digicert --order-id 1 --approval-email example.com=not-an-email; one_line_err
expect_code 2 "$bin/dlq" list --provider nope; one_line_err
[[ $(ntasks) == "$before" ]] || fail "a rejected request enqueued something"

check "unreachable Redis: one line, exit 1"
expect_code 1 "$bin/enqueue" opensrs --order-id 1 --redis-url redis://127.0.0.1:1/0; one_line_err
expect_code 1 "$bin/dlq" list --redis-url redis://127.0.0.1:1/0; one_line_err
expect_code 1 "$bin/enqueue" status no-such-task; one_line_err

check "worker without providers: exit 2 naming the variables"
expect_code 2 env -u OPENSRS_API_KEY -u DIGICERT_API_KEY "$bin/worker" --http-addr off; one_line_err
grep -q OPENSRS_API_KEY "$tmp/err" || fail "worker config error does not name the variables"

check "crash path: a task whose worker was killed -9 ends in dlq (asynq's recoverer, then our reconcile)"
expect_code 0 "$bin/enqueue" opensrs --order-id 1004 --max-retry 0 --reference e2e-crash
crash_id=$(cat "$tmp/out")
wait_state "$crash_id" active
kill -KILL "$wpid"; wait "$wpid" 2>/dev/null || true
start_worker
wait_state "$crash_id" archived 200   # lease 30 s + recoverer cut-off 30 s + its 1 min period
expect_code 0 "$bin/dlq" list --json --error-contains lease
python3 - "$tmp/out" "$crash_id" <<'PY'
import json, sys
items = [i for i in json.load(open(sys.argv[1])) if i["id"] == sys.argv[2]]
assert len(items) == 1, "crashed task not listed"
assert items[0]["payload"]["reference"] == "e2e-crash", items[0]
PY
expect_code 0 "$bin/dlq" replay "$crash_id"
read -r old new <"$tmp/out"
[[ "$old" == "$crash_id" && -n "$new" ]] || fail "crash replay printed '$(cat "$tmp/out")'"

check "HTTP API: refuses to start without tokens (exit 2), then a curl POST is processed and names its producer"
expect_code 2 "$bin/api"; one_line_err
aport=$(free_port)
api_token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
printf 'e2e-portal:%s\n' "$api_token" >"$tmp/api-tokens"
API_TOKENS_FILE="$tmp/api-tokens" API_ADDR="127.0.0.1:$aport" "$bin/api" >>"$tmp/api.log" 2>&1 &
apid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$aport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
code=$(curl -sS -o "$tmp/out" -w '%{http_code}' -H "Authorization: Bearer $api_token" -H 'Content-Type: application/json' \
  -d '{"provider":"digicert","order_id":"2077","reference":"e2e-api"}' "http://127.0.0.1:$aport/v1/resends")
[[ "$code" == 202 ]] || fail "POST /v1/resends answered $code: $(cat "$tmp/out")"
api_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$tmp/out")
wait_state "$api_id" completed
expect_code 0 "$bin/enqueue" status "$api_id" --json
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["payload"]["producer"] == "e2e-portal"' "$tmp/out" || fail "no producer in status"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$aport/v1/resends")
[[ "$code" == 401 ]] || fail "POST without a token answered $code"
kill -TERM "$apid"; wait "$apid" || fail "api exited non-zero on SIGTERM"; apid=""
if grep -q "$api_token" "$tmp/api.log"; then fail "API token in the api log"; fi

check "graceful shutdown"
kill -TERM "$wpid"; wait "$wpid" || fail "worker exited non-zero on SIGTERM"; wpid=""
grep -q '"worker stopped"' "$tmp/worker.log" || fail "no clean stop logged"
if grep -q 'demo-key-not-a-secret' "$tmp/worker.log" "$tmp/worker.out"; then fail "API key in logs"; fi
echo "e2e: $checks passed, 0 failed"
