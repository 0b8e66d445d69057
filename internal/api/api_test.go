package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	apispec "github.com/certmail/certmail/api"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// TestSingle: a new request answers 202 with the task, an identical one
// inside the dedup window 200 naming the first task, and the token's name
// is recorded in the payload as producer (not part of the identity: the
// same request from another token is a duplicate too).
func TestSingle(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		r := e.post(t, `{"provider":"opensrs","order_id":"1799","reference":"T-1"}`)
		require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
		var first Resend
		r.json(t, &first)
		require.Equal(t, Resend{ID: first.ID, Type: tasks.TypeOpenSRSResendCertEmail, Queue: "opensrs", State: "pending"}, first)
		ti := e.task(t, "opensrs", first.ID)
		require.JSONEq(t, `{"order_id":"1799","reference":"T-1","producer":"billing"}`, string(ti.Payload))
		require.Equal(t, tasks.DefaultMaxRetry, ti.MaxRetry)

		r = e.post(t, `{"reference":"T-1","order_id":"1799","provider":"opensrs"}`)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		var dup Resend
		r.json(t, &dup)
		require.Equal(t, Resend{ID: first.ID, Type: first.Type, Queue: "opensrs", State: "pending", DuplicateOf: first.ID}, dup)

		r = e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1799","reference":"T-1"}`,
			map[string]string{"Authorization": "Bearer " + supportToken}, true)
		require.Equal(t, http.StatusOK, r.status, "another producer's identical request is a duplicate: %s", r.body)
		require.Equal(t, 1, e.taskCount(t))
	})
}

// TestSingleOptions: max_retry, timeout and delay mean what the CLI flags
// mean; a delayed task is scheduled.
func TestSingleOptions(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		r := e.post(t, `{"provider":"digicert","order_id":"55","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en","max_retry":3,"timeout":"30s","delay":"60s"}`)
		require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
		var res Resend
		r.json(t, &res)
		require.Equal(t, "scheduled", res.State)
		require.Equal(t, tasks.TypeDigiCertResendEmails, res.Type)
		ti := e.task(t, "digicert", res.ID)
		require.Equal(t, 3, ti.MaxRetry)
		require.Equal(t, 30*time.Second, ti.Timeout)
		require.Equal(t, "scheduled", ti.State.String())
		require.WithinDuration(t, time.Now().Add(60*time.Second), ti.NextProcessAt, 5*time.Second)
	})
}

// TestSingleErrors: every invalid request answers a problem naming the
// field, with email addresses masked, and enqueues nothing.
func TestSingleErrors(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		big := `{"provider":"opensrs","order_id":"1","reference":"` + strings.Repeat("x", MaxBodyBytes) + `"}`
		tests := []struct {
			name, body string
			hdr        map[string]string
			status     int
			field      string
			detail     string
			valid      bool // the contract alone cannot tell
		}{
			{"UnknownField", `{"provider":"opensrs","order_id":"1","extra":1}`, nil, 400, "extra", `unknown field "extra"`, false},
			{"MissingProvider", `{"order_id":"1"}`, nil, 400, "provider", "provider: is required", false},
			{"BadProvider", `{"provider":"sectigo","order_id":"1"}`, nil, 400, "provider", `must be opensrs or digicert`, false},
			{"BadOrder", `{"provider":"opensrs","order_id":"12a"}`, nil, 400, "order_id", "order_id: must be 1-20 ASCII digits", false},
			{"OtherProvidersField", `{"provider":"opensrs","order_id":"1","locale":"en"}`, nil, 400, "locale", "only for provider digicert", true},
			{"BadEmailMasked", `{"provider":"digicert","order_id":"1","domain_approval_emails":[{"domain":"example.com","email":"jane.doe@example.com x"}]}`,
				nil, 400, "domain_approval_emails[0].email", "must be a bare email address", true},
			{"ReferenceWithEmailMasked", `{"provider":"opensrs","order_id":"1","reference":"` + strings.Repeat("r", 120) + ` jane.doe@example.com"}`,
				nil, 400, "reference", "at most 128 characters", false},
			{"UnknownFieldNamedLikeEmail", `{"provider":"opensrs","order_id":"1","jane.doe@example.com":1}`, nil, 400, "j***@example.com", "unknown field", false},
			{"NegativeMaxRetry", `{"provider":"opensrs","order_id":"1","max_retry":-1}`, nil, 400, "max_retry", "must be 0 or more", false},
			{"MaxRetryNotInteger", `{"provider":"opensrs","order_id":"1","max_retry":"3"}`, nil, 400, "max_retry", "must be an integer", false},
			{"FractionalTimeout", `{"provider":"opensrs","order_id":"1","timeout":"1.5s"}`, nil, 400, "timeout", "whole seconds", true},
			{"TimeoutNotDuration", `{"provider":"opensrs","order_id":"1","timeout":"soon"}`, nil, 400, "timeout", "duration string", true},
			{"NegativeDelay", `{"provider":"opensrs","order_id":"1","delay":"-5s"}`, nil, 400, "delay", "must not be negative", true},
			{"ProducerFromRequest", `{"provider":"opensrs","order_id":"1","producer":"someone-else"}`, nil, 400, "producer", "unknown field", false},
			{"NotJSON", `provider=opensrs`, nil, 400, "body", "invalid JSON", false},
			{"NotAnObject", `[1]`, nil, 400, "body", "want an object", false},
			{"WrongContentType", `{"provider":"opensrs","order_id":"1"}`, map[string]string{"Content-Type": "text/plain"}, 415, "Content-Type", "want application/json", false},
			{"TooLarge", big, nil, 413, "body", "at most", false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := e.req(t, "POST", "/v1/resends", tc.body, tc.hdr, tc.valid)
				require.Equal(t, tc.status, r.status, "%s", r.body)
				p := r.problem(t)
				require.Equal(t, tc.field, p.Field)
				require.Contains(t, p.Detail, tc.detail)
				require.NotContains(t, string(r.body), "jane.doe@", "email not masked")
			})
		}
		require.Equal(t, 0, e.taskCount(t))
	})
}

// TestBatch: a JSON array and the same items as JSON Lines answer one
// result per item in order; valid items are enqueued, bad ones name their
// field, a repeated item is a duplicate of the first.
func TestBatch(t *testing.T) {
	t.Parallel()
	items := []string{
		`{"provider":"opensrs","order_id":"1799"}`,
		`{"provider":"opensrs","order_id":"abc"}`,
		`{"provider":"digicert","order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en","max_retry":2}`,
		`{"provider":"opensrs","order_id":"1","extra":true}`,
		`{"provider":"opensrs","order_id":"1799"}`,
		`{"provider":"digicert","order_id":"7","delay":"1.5s"}`,
		`{"provider":"digicert","order_id":"8","domain_approval_emails":[{"domain":"example.com","email":"jane.doe@"}]}`,
		`{"provider":"opensrs","type":"opensrs:resend_approve_email","order_id":"2000"}`,
	}
	check := func(t *testing.T, e *env, r reply) {
		t.Helper()
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		var br BatchResponse
		r.json(t, &br)
		require.Len(t, br.Results, len(items))
		for i, res := range br.Results {
			require.Equal(t, i, res.Index)
		}
		ok := func(i, status int) string {
			require.Equal(t, status, br.Results[i].Status, "item %d: %+v", i, br.Results[i])
			require.Nil(t, br.Results[i].Error)
			return br.Results[i].ID
		}
		bad := func(i int, field, detail string) {
			res := br.Results[i]
			require.Equal(t, 400, res.Status, "item %d", i)
			require.Empty(t, res.ID)
			require.NotNil(t, res.Error, "item %d", i)
			require.Equal(t, field, res.Error.Field, "item %d", i)
			require.Contains(t, res.Error.Detail, detail, "item %d", i)
		}
		// Items 0 and 4 are identical and run concurrently: one creates
		// the task, the other is its duplicate.
		orig, dup := 0, 4
		if br.Results[0].Status == http.StatusOK {
			orig, dup = 4, 0
		}
		first := ok(orig, 202)
		bad(1, "order_id", "1-20 ASCII digits")
		dc := ok(2, 202)
		bad(3, "extra", "unknown field")
		require.Equal(t, first, ok(dup, 200))
		require.Equal(t, first, br.Results[dup].DuplicateOf)
		bad(5, "delay", "whole seconds")
		bad(6, "domain_approval_emails[0].email", "bare email")
		approve := ok(7, 202)
		require.Equal(t, BatchResponse{Enqueued: 3, Duplicates: 1, Failed: 4, Results: br.Results}, br)
		require.NotContains(t, string(r.body), "jane.doe@")
		require.Equal(t, 3, e.taskCount(t))
		require.Equal(t, 2, e.task(t, "digicert", dc).MaxRetry)
		require.Equal(t, tasks.TypeOpenSRSResendApproveEmail, e.task(t, "opensrs", approve).Type)
		require.JSONEq(t, `{"order_id":"1799","producer":"billing"}`, string(e.task(t, "opensrs", first).Payload))
	}
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		t.Run("JSONArray", func(t *testing.T) {
			e := newEnv(t, b)
			check(t, e, e.req(t, "POST", "/v1/resends:batch", "["+strings.Join(items, ",\n")+"]", nil, true))
		})
		t.Run("NDJSON", func(t *testing.T) {
			e := newEnv(t, redistest.Mini(t))
			if b.Real() {
				e = newEnv(t, redistest.Real(t))
			}
			check(t, e, e.req(t, "POST", "/v1/resends:batch", strings.Join(items, "\n")+"\n",
				map[string]string{"Content-Type": "application/x-ndjson"}, true))
		})
	})
}

// TestBatchLimits: over MaxBatchItems or MaxBatchBytes answers 413 and
// enqueues nothing; a body that is not an array, or an empty one, 400.
func TestBatchLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Mini(t))
	many := "[" + strings.TrimSuffix(strings.Repeat(`{"provider":"opensrs","order_id":"1"},`, MaxBatchItems+1), ",") + "]"
	r := e.req(t, "POST", "/v1/resends:batch", many, nil, false)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status)
	require.Contains(t, r.problem(t).Detail, "at most 10000 items")

	manyLines := strings.Repeat(`{"provider":"opensrs","order_id":"1"}`+"\n", MaxBatchItems+1)
	r = e.req(t, "POST", "/v1/resends:batch", manyLines, map[string]string{"Content-Type": "application/x-ndjson"}, true)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status)

	huge := `["` + strings.Repeat("x", MaxBatchBytes) + `"]`
	r = e.req(t, "POST", "/v1/resends:batch", huge, nil, true)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.status)
	require.Equal(t, "body", r.problem(t).Field)

	r = e.req(t, "POST", "/v1/resends:batch", `{"provider":"opensrs","order_id":"1"}`, nil, false)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Equal(t, "body", r.problem(t).Field)
	r = e.req(t, "POST", "/v1/resends:batch", `[]`, nil, true)
	require.Equal(t, http.StatusBadRequest, r.status)
	require.Equal(t, 0, e.taskCount(t))
}

// TestIdempotencyKey: the same key and body replay the first response
// (status and body) even after the dedup window would have let a new task
// through; another body with the key answers 422; keys are per token.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		key := map[string]string{"Idempotency-Key": "order-1799-attempt-1"}
		body := `{"provider":"opensrs","order_id":"1799","max_retry":1}`
		first := e.req(t, "POST", "/v1/resends", body, key, true)
		require.Equal(t, http.StatusAccepted, first.status, "%s", first.body)
		require.Empty(t, first.header.Get("Idempotent-Replayed"))

		again := e.req(t, "POST", "/v1/resends", body, key, true)
		require.Equal(t, http.StatusAccepted, again.status, "the first status, not 200 duplicate")
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, "true", again.header.Get("Idempotent-Replayed"))

		r := e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1800"}`, key, true)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		require.Equal(t, "Idempotency-Key", r.problem(t).Field)

		// Another token's same key is its own.
		r = e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"1800"}`,
			map[string]string{"Idempotency-Key": key["Idempotency-Key"], "Authorization": "Bearer " + supportToken}, true)
		require.Equal(t, http.StatusAccepted, r.status)

		// A stored error replays too.
		bad := map[string]string{"Idempotency-Key": "bad-1"}
		r1 := e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"x"}`, bad, false)
		r2 := e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"x"}`, bad, false)
		require.Equal(t, http.StatusBadRequest, r2.status)
		require.Equal(t, string(r1.body), string(r2.body))

		r = e.req(t, "POST", "/v1/resends", body, map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}, false)
		require.Equal(t, http.StatusBadRequest, r.status)
		require.Equal(t, "Idempotency-Key", r.problem(t).Field)
		require.Equal(t, 2, e.taskCount(t))
	})
}

// TestIdempotencyKeyConcurrent: many requests with one key at once create
// one task, and every one of them answers the first response. The dedup
// window is off so that only the key can prevent a second task.
func TestIdempotencyKeyConcurrent(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		e.srv.defaults.DedupWindow = 0
		const n = 16
		var wg sync.WaitGroup
		replies := make([]reply, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				replies[i] = e.req(t, "POST", "/v1/resends", `{"provider":"digicert","order_id":"4242"}`,
					map[string]string{"Idempotency-Key": "concurrent"}, true)
			}()
		}
		wg.Wait()
		for _, r := range replies {
			require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
			require.Equal(t, string(replies[0].body), string(r.body))
		}
		require.Equal(t, 1, e.taskCount(t))
	})
}

// TestAuth: a missing, malformed or unknown token answers 401 with
// WWW-Authenticate and enqueues nothing; the operations routes and the
// contract need none; the access log names the token, never shows it.
func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Mini(t))
	body := `{"provider":"opensrs","order_id":"1"}`
	for name, auth := range map[string]string{
		"Missing": "", "Unknown": "Bearer " + strings.Repeat("z", 40), "Basic": "Basic " + billingToken,
		"Prefix": "Bearer " + billingToken[:20], "Longer": "Bearer " + billingToken + "x",
	} {
		t.Run(name, func(t *testing.T) {
			r := e.req(t, "POST", "/v1/resends", body, map[string]string{"Authorization": auth}, true)
			require.Equal(t, http.StatusUnauthorized, r.status)
			require.Equal(t, `Bearer realm="certmail"`, r.header.Get("WWW-Authenticate"))
			require.Equal(t, "Authorization", r.problem(t).Field)
			r = e.req(t, "GET", "/v1/resends/x", "", map[string]string{"Authorization": auth}, true)
			require.Equal(t, http.StatusUnauthorized, r.status)
		})
	}
	require.Equal(t, 0, e.taskCount(t))
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/v1/openapi.yaml"} {
		r := e.req(t, "GET", path, "", map[string]string{"Authorization": ""}, true)
		require.Equal(t, http.StatusOK, r.status, path)
	}
	r := e.post(t, body)
	require.Equal(t, http.StatusAccepted, r.status)
	logs := e.logs.String()
	require.Contains(t, logs, `"producer":"billing"`)
	require.Contains(t, logs, `"route":"POST /v1/resends"`)
	require.NotContains(t, logs, billingToken)
	require.NotContains(t, logs, billingToken[:20])
}

// TestTokensReload: Reload swaps the set; a broken file keeps the old one.
func TestTokensReload(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens")
	require.NoError(t, os.WriteFile(path, []byte("billing:"+billingToken+"\n"), 0o600))
	tk, err := LoadTokens(path)
	require.NoError(t, err)
	name, ok := tk.Lookup(billingToken)
	require.True(t, ok)
	require.Equal(t, "billing", name)
	_, ok = tk.Lookup(supportToken)
	require.False(t, ok)

	require.NoError(t, os.WriteFile(path, []byte("support:"+supportToken+"\n"), 0o600))
	require.NoError(t, tk.Reload())
	_, ok = tk.Lookup(billingToken)
	require.False(t, ok, "a removed token is refused after reload")
	name, ok = tk.Lookup(supportToken)
	require.True(t, ok)
	require.Equal(t, "support", name)

	require.NoError(t, os.WriteFile(path, []byte("broken line\n"), 0o600))
	require.ErrorContains(t, tk.Reload(), "line 1: want name:token")
	_, ok = tk.Lookup(supportToken)
	require.True(t, ok, "a broken file keeps the tokens in force")
}

// TestParseTokensErrors: every bad tokens file is refused, naming the line
// and never showing a token.
func TestParseTokensErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, file, want string }{
		{"Empty", "# nothing\n", "no tokens"},
		{"NoColon", billingToken + "\n", "line 1: want name:token"},
		{"BadName", "bill ing:" + billingToken + "\n", "line 1: name producer:"},
		{"Short", "billing:short-token\n", "line 1 (billing): token must be at least 32"},
		{"Space", "billing:" + billingToken + " x\n", "printable ASCII without spaces"},
		{"NameTwice", "a:" + billingToken + "\na:" + supportToken + "\n", "line 2: name a given twice"},
		{"TokenTwice", "a:" + billingToken + "\nb:" + billingToken + "\n", "line 2 (b): token already given"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTokens(strings.NewReader(tc.file))
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), billingToken)
		})
	}
}

// TestRateLimit: past API_RATE_LIMIT a token gets 429 with Retry-After;
// another token keeps its own budget.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b, withRateLimit("3/1m"))
		for i := range 3 {
			r := e.post(t, `{"provider":"opensrs","order_id":"`+strconv.Itoa(i+1)+`"}`)
			require.Equal(t, http.StatusAccepted, r.status)
		}
		r := e.post(t, `{"provider":"opensrs","order_id":"9"}`)
		require.Equal(t, http.StatusTooManyRequests, r.status)
		ra, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err)
		require.True(t, ra >= 1 && ra <= 60, "Retry-After %d", ra)
		require.Contains(t, r.problem(t).Detail, "3/1m0s")
		r = e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"9"}`, map[string]string{"Authorization": "Bearer " + supportToken}, true)
		require.Equal(t, http.StatusAccepted, r.status)
		require.Equal(t, 4, e.taskCount(t))
	})
}

// TestStatus: GET /v1/resends/{id} is the `enqueue status --json` object,
// masked; an unknown ID answers 404.
func TestStatus(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		e := newEnv(t, b)
		r := e.post(t, `{"provider":"digicert","order_id":"77","domain_approval_emails":[{"domain":"example.com","email":"jane.doe@example.com"}],"reference":"for jane.doe@example.com"}`)
		require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
		var res Resend
		r.json(t, &res)
		r = e.req(t, "GET", "/v1/resends/"+res.ID, "", nil, true)
		require.Equal(t, http.StatusOK, r.status)
		var st map[string]any
		r.json(t, &st)
		require.Equal(t, res.ID, st["id"])
		require.Equal(t, "pending", st["state"])
		require.Equal(t, "billing", st["payload"].(map[string]any)["producer"])
		require.Equal(t, []any{}, st["attempts"])
		require.NotContains(t, string(r.body), "jane.doe@")

		r = e.req(t, "GET", "/v1/resends/no-such-task", "", nil, true)
		require.Equal(t, http.StatusNotFound, r.status)
		require.Equal(t, "id", r.problem(t).Field)
	})
}

// TestOps: /metrics counts requests by route and status and observes
// latency; the contract served is api/openapi.yaml byte for byte; unknown
// routes and methods answer problems.
func TestOps(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Mini(t))
	require.Equal(t, http.StatusAccepted, e.post(t, `{"provider":"opensrs","order_id":"1"}`).status)
	require.Equal(t, http.StatusBadRequest, e.req(t, "POST", "/v1/resends", `{}`, nil, false).status)
	r := e.req(t, "GET", "/v1/openapi.yaml", "", nil, true)
	require.Equal(t, string(apispec.OpenAPI), string(r.body))
	file, err := os.ReadFile("../../api/openapi.yaml")
	require.NoError(t, err)
	require.Equal(t, string(file), string(r.body))

	r = e.req(t, "GET", "/nope", "", nil, true)
	require.Equal(t, http.StatusNotFound, r.status)
	r.problem(t)
	r = e.req(t, "DELETE", "/v1/resends", "", nil, true)
	require.Equal(t, http.StatusMethodNotAllowed, r.status)
	require.Equal(t, "POST", r.header.Get("Allow"))

	r = e.req(t, "GET", "/metrics", "", nil, true)
	m := string(r.body)
	for _, want := range []string{
		`certmail_api_requests_total{code="202",route="POST /v1/resends"} 1`,
		`certmail_api_requests_total{code="400",route="POST /v1/resends"} 1`,
		`certmail_api_requests_total{code="404",route="other"} 1`,
		`certmail_api_request_duration_seconds_count{route="POST /v1/resends"} 2`,
		`certmail_api_tasks_total{result="enqueued"} 1`,
		`certmail_api_tasks_total{result="invalid"} 1`,
	} {
		require.Contains(t, m, want)
	}
}

// TestNoAuth: without tokens every request is served, and tasks carry no
// producer.
func TestNoAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Mini(t), withoutAuth())
	r := e.req(t, "POST", "/v1/resends", `{"provider":"opensrs","order_id":"5"}`, map[string]string{"Authorization": ""}, true)
	require.Equal(t, http.StatusAccepted, r.status)
	var res Resend
	r.json(t, &res)
	require.Equal(t, `{"order_id":"5"}`, string(e.task(t, "opensrs", res.ID).Payload))
}

var _ = fmt.Sprint
var _ = json.Valid
