package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/api/apitest"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// Test tokens (at least MinTokenLen characters).
const (
	billingToken = "billing-0123456789abcdef0123456789abcdef"
	supportToken = "support-0123456789abcdef0123456789abcdef"
)

type env struct {
	t    *testing.T
	b    redistest.Backend
	srv  *Server
	http *httptest.Server
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type envOpt func(*Config)

func withRateLimit(rule string) envOpt {
	return func(c *Config) {
		rules, err := ratelimit.ParseRules(rule)
		if err != nil {
			panic(err)
		}
		c.RateLimit = rules
	}
}

func withoutAuth() envOpt { return func(c *Config) { c.Tokens = nil } }

func newEnv(t *testing.T, b redistest.Backend, opts ...envOpt) *env {
	t.Helper()
	set, err := ParseTokens(strings.NewReader("billing:" + billingToken + "\n# comment\n\nsupport:" + supportToken + "\n"))
	require.NoError(t, err)
	tokens := &Tokens{}
	tokens.set.Store(&set)
	logs := &syncBuffer{}
	cfg := Config{Redis: b.Client(t), Tokens: tokens, Logger: slog.New(slog.NewJSONHandler(logs, nil))}
	for _, o := range opts {
		o(&cfg)
	}
	srv := New(cfg)
	srv.idemWait = 10 * time.Second
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); _ = srv.Close() })
	return &env{t: t, b: b, srv: srv, http: hs, logs: logs}
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T, v any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(r.body, v), "body: %s", r.body)
}

func (r reply) problem(t *testing.T) Problem {
	t.Helper()
	require.Equal(t, "application/problem+json", r.header.Get("Content-Type"), "body: %s", r.body)
	var p Problem
	r.json(t, &p)
	require.Equal(t, r.status, p.Status)
	return p
}

// req makes one request with the billing token (or the given headers) and
// checks the exchange against api/openapi.yaml; valid says whether the
// request is meant to match the contract.
func (e *env) req(t *testing.T, method, path, body string, hdr map[string]string, valid bool) reply {
	t.Helper()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+billingToken)
	if body != "" {
		h.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if v == "" {
			h.Del(k)
			continue
		}
		h.Set(k, v)
	}
	rq, err := http.NewRequestWithContext(t.Context(), method, e.http.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	rq.Header = h.Clone()
	resp, err := e.http.Client().Do(rq)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	apitest.Check(t, apitest.Exchange{Method: method, URL: e.http.URL + path, Header: h, Body: []byte(body),
		Status: resp.StatusCode, RespHeader: resp.Header, RespBody: b}, valid)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) post(t *testing.T, body string) reply {
	t.Helper()
	return e.req(t, "POST", "/v1/resends", body, nil, true)
}

// taskCount is the number of tasks asynq holds in every queue and state.
func (e *env) taskCount(t *testing.T) int {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(e.b.Client(t))
	n := 0
	for _, q := range tasks.Queues {
		info, err := insp.GetQueueInfo(q)
		if err != nil {
			continue
		}
		n += info.Size
	}
	return n
}

func (e *env) task(t *testing.T, queue, id string) *asynq.TaskInfo {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(e.b.Client(t))
	ti, err := insp.GetTaskInfo(queue, id)
	require.NoError(t, err)
	return ti
}
