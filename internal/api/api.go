// Package api is the HTTP enqueue API (cmd/api): producers in any language
// enqueue resends with a bearer token instead of speaking asynq's Redis
// format. It holds no state of its own: tasks, dedup marks, idempotency
// records and the per-token rate limit all live in Redis (through
// internal/tasks and internal/rdb), so any number of replicas can serve.
//
//	POST /v1/resends          one task, the body a batch line plus max_retry, timeout, delay
//	POST /v1/resends:batch    up to MaxBatchItems tasks (JSON array or application/x-ndjson)
//	GET  /v1/resends/{id}     the task as `enqueue status --json` shows it
//	GET  /v1/openapi.yaml     the contract (api/openapi.yaml)
//	GET  /healthz, /readyz, /metrics
//
// Every rule is the tasks package's: DecodeLine (the batch line format and
// payload validation), Options.Validate (max_retry, timeout, delay), the
// deduplicating Enqueuer and its batch engine. Errors are RFC 9457 problem
// details naming the field, with email addresses masked.
package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	apispec "github.com/certmail/certmail/api"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/rdb"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/taskstatus"
)

// Limits, part of the API contract (README, api/openapi.yaml).
const (
	// MaxBodyBytes bounds the body of POST /v1/resends: a batch line's
	// limit (tasks.MaxLineBytes), so any valid task fits.
	MaxBodyBytes = tasks.MaxLineBytes
	// MaxBatchBytes bounds the body of POST /v1/resends:batch.
	MaxBatchBytes = 16 << 20
	// MaxBatchItems bounds the items of one batch.
	MaxBatchItems = 10_000
	// MaxIdempotencyKeyLen bounds the Idempotency-Key header.
	MaxIdempotencyKeyLen = 255
	// IdempotencyTTL is how long a response is replayed for its key.
	IdempotencyTTL = 24 * time.Hour
	// DefaultRateLimit is API_RATE_LIMIT's default, per token.
	DefaultRateLimit = "50/1s"
	// DefaultConcurrency is the enqueues in flight for one batch.
	DefaultConcurrency = 32
)

// Config configures New.
type Config struct {
	// Redis is the connection every request uses. Required.
	Redis redis.UniversalClient
	// Tokens authenticates requests; nil serves without authentication
	// (cmd/api allows that only on a loopback address, with --no-auth).
	Tokens *Tokens
	// RateLimit is the per-token request limit, shared by every replica
	// through Redis; nil means none.
	RateLimit []ratelimit.Rule
	// Defaults are the task options a request does not set (zero value:
	// tasks.DefaultOptions()).
	Defaults *tasks.Options
	// Concurrency is the enqueues in flight for one batch
	// (DefaultConcurrency when 0).
	Concurrency int
	// Logger receives one JSON access log line per request; nil discards.
	Logger *slog.Logger
}

// Server is the API. Build it with New; serve Handler.
type Server struct {
	cfg      Config
	defaults tasks.Options
	enq      *tasks.Enqueuer
	rdb      *rdb.Client
	limiter  *rdb.Limiter
	rules    []rdb.LimitRule
	insp     *asynq.Inspector
	mux      *http.ServeMux
	log      *slog.Logger

	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	items    *prometheus.CounterVec

	idemLease time.Duration // a pending idempotency record's lease
	idemWait  time.Duration // how long a same-key request waits for the first
}

// New returns the API on cfg.Redis.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, defaults: tasks.DefaultOptions(), enq: tasks.NewEnqueuer(cfg.Redis), rdb: rdb.New(cfg.Redis),
		insp: asynq.NewInspectorFromRedisClient(cfg.Redis), mux: http.NewServeMux(), log: cfg.Logger,
		idemLease: time.Minute, idemWait: 10 * time.Second}
	if cfg.Defaults != nil {
		s.defaults = *cfg.Defaults
	}
	if s.cfg.Concurrency <= 0 {
		s.cfg.Concurrency = DefaultConcurrency
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.limiter = s.rdb.NewLimiter()
	for _, r := range cfg.RateLimit {
		s.rules = append(s.rules, rdb.LimitRule{N: r.N, Per: r.Per})
	}
	s.reg = prometheus.NewRegistry()
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "certmail_api_requests_total", Help: "HTTP API requests by route and status code.",
	}, []string{"route", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "certmail_api_request_duration_seconds", Help: "HTTP API request latency by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route"})
	s.items = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "certmail_api_tasks_total", Help: "Tasks asked for through the HTTP API by result: enqueued, duplicate, invalid, failed.",
	}, []string{"result"})
	s.reg.MustRegister(s.requests, s.latency, s.items, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	s.mux.HandleFunc("POST /v1/resends", s.auth(s.postResend))
	s.mux.HandleFunc("POST /v1/resends:batch", s.auth(s.postBatch))
	s.mux.HandleFunc("GET /v1/resends/{id}", s.auth(s.getResend))
	s.mux.HandleFunc("GET /v1/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(apispec.OpenAPI)
	})
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/", s.notFound)
	return s
}

// Close releases the enqueuer and the inspector; the Redis client stays
// open (its owner closes it).
func (s *Server) Close() error {
	_ = s.enq.Close()
	return nil
}

// Registry is the API's Prometheus registry (for tests).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// routes answer 405 rather than 404 for another method.
var routes = map[string]string{"/v1/resends": "POST", "/v1/resends:batch": "POST", "/v1/openapi.yaml": "GET",
	"/healthz": "GET", "/readyz": "GET", "/metrics": "GET"}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	if m, ok := routes[r.URL.Path]; ok || (strings.HasPrefix(r.URL.Path, "/v1/resends/") && strings.Count(r.URL.Path, "/") == 3) {
		if !ok {
			m = "GET"
		}
		w.Header().Set("Allow", m)
		writeProblem(w, newProblem(http.StatusMethodNotAllowed, "", r.Method+" is not allowed here (want "+m+")"))
		return
	}
	writeProblem(w, newProblem(http.StatusNotFound, "", "no such route (see GET /v1/openapi.yaml)"))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.cfg.Redis.Ping(ctx).Err(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "redis: "+redact.Emails(err.Error())+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// reqInfo is what the access log and metrics learn while a request runs.
type reqInfo struct{ producer string }

type infoKey struct{}

// recorder captures the status and size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += n
	return n, err
}

// Handler serves the API with metrics and access logs around every route.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{}
		r = r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
		rec := &recorder{ResponseWriter: w}
		s.mux.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		route := r.Pattern
		if route == "" || route == "/" {
			route = "other"
		}
		d := time.Since(start)
		s.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		s.latency.WithLabelValues(route).Observe(d.Seconds())
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("method", r.Method), slog.String("route", route), slog.String("path", r.URL.Path),
			slog.Int("status", rec.status), slog.Int("bytes", rec.bytes),
			slog.Float64("duration_ms", float64(d.Microseconds())/1000),
			slog.String("producer", info.producer), slog.String("remote", r.RemoteAddr))
	})
}

// auth checks the bearer token and the token's rate limit, then calls next
// with the token's name ("" without authentication).
func (s *Server) auth(next func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := ""
		if s.cfg.Tokens != nil {
			ok := false
			if scheme, tok, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "Bearer") {
				name, ok = s.cfg.Tokens.Lookup(strings.TrimSpace(tok))
			}
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="certmail"`)
				writeProblem(w, newProblem(http.StatusUnauthorized, "Authorization", "want Authorization: Bearer <token> with a token of API_TOKENS_FILE"))
				return
			}
		}
		if info, ok := r.Context().Value(infoKey{}).(*reqInfo); ok {
			info.producer = name
		}
		if len(s.rules) > 0 {
			res, err := s.limiter.Reserve(r.Context(), "api", limitHash(name), s.rules)
			if err != nil {
				s.unavailable(w, err)
				return
			}
			if res.Wait > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(res.Wait.Seconds()))))
				writeProblem(w, newProblem(http.StatusTooManyRequests, "", fmt.Sprintf("over API_RATE_LIMIT %s for this token; retry in %s", s.cfg.RateLimit[res.Rule], res.Wait.Round(time.Millisecond))))
				return
			}
		}
		next(w, r, name)
	}
}

// limitHash names a token's rate-limit log: 16 hex digits of the SHA-256 of
// its name (the limiter's key holds no name, like it holds no credential).
func limitHash(name string) string {
	sum := sha256.Sum256([]byte("api-token:" + name))
	return hex.EncodeToString(sum[:8])
}

func (s *Server) unavailable(w http.ResponseWriter, err error) {
	w.Header().Set("Retry-After", "1")
	writeProblem(w, newProblem(http.StatusServiceUnavailable, "", "redis: "+err.Error()))
}

// response is an answer as the idempotency record stores it.
type response struct {
	Status int    `json:"status"`
	CType  string `json:"ctype"`
	Body   []byte `json:"body"`
	// transient marks an answer not to store for its Idempotency-Key: a
	// 5xx, or a batch with an item Redis failed. A retry runs again (the
	// dedup window keeps items already enqueued from becoming new tasks).
	transient bool
}

func jsonResponse(status int, v any) response {
	b, _ := json.Marshal(v)
	return response{Status: status, CType: "application/json", Body: b}
}

func problemResponse(p Problem) response {
	b, _ := json.Marshal(p)
	return response{Status: p.Status, CType: "application/problem+json", Body: b}
}

func (resp response) write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", resp.CType)
	w.Header().Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// readBody reads a body of at most limit bytes; ok is false when it has
// answered (413 over the limit).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeProblem(w, newProblem(http.StatusRequestEntityTooLarge, "body", fmt.Sprintf("must be at most %d bytes", limit)))
		return nil, false
	}
	if err != nil {
		writeProblem(w, newProblem(http.StatusBadRequest, "body", "reading the body: "+err.Error()))
		return nil, false
	}
	return body, true
}

// mediaType is the request's Content-Type without parameters ("" if none).
func mediaType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ct
	}
	return strings.ToLower(mt)
}

// Resend is the answer to one enqueued task.
type Resend struct {
	ID          string `json:"id"`
	Type        string `json:"type"`
	Queue       string `json:"queue"`
	State       string `json:"state"`
	DuplicateOf string `json:"duplicate_of,omitempty"`
}

func (s *Server) postResend(w http.ResponseWriter, r *http.Request, producer string) {
	if mt := mediaType(r); mt != "application/json" && mt != "" {
		writeProblem(w, newProblem(http.StatusUnsupportedMediaType, "Content-Type", "want application/json, got "+mt))
		return
	}
	body, ok := readBody(w, r, MaxBodyBytes)
	if !ok {
		return
	}
	s.idempotent(w, r, producer, body, func() response {
		ctx, cancel := workContext(r)
		defer cancel()
		return s.enqueueOne(ctx, producer, body)
	})
}

func (s *Server) enqueueOne(ctx context.Context, producer string, body []byte) response {
	line, opts, err := s.splitOptions(body, producer)
	if err != nil {
		s.items.WithLabelValues("invalid").Inc()
		return problemResponse(newProblem(http.StatusBadRequest, fieldOf(err), detailOf(err)))
	}
	p, err := tasks.DecodeLine(line)
	if err != nil {
		s.items.WithLabelValues("invalid").Inc()
		return problemResponse(newProblem(http.StatusBadRequest, fieldOf(err), detailOf(err)))
	}
	res, err := s.enq.Enqueue(ctx, p, opts)
	if err != nil {
		return s.enqueueFailure(err)
	}
	out := Resend{ID: res.ID, Type: p.Type(), Queue: string(p.Provider()), State: "pending"}
	if opts.Delay > 0 {
		out.State = "scheduled"
	}
	if res.Duplicate {
		s.items.WithLabelValues("duplicate").Inc()
		out.DuplicateOf = res.ID
		out.State = s.state(ctx, out.Queue, res.ID)
		return jsonResponse(http.StatusOK, out)
	}
	s.items.WithLabelValues("enqueued").Inc()
	return jsonResponse(http.StatusAccepted, out)
}

// enqueueFailure answers an Enqueue error: a payload too large is the
// request's fault (400); anything else is Redis (503, safe to retry: the
// dedup mark makes a retry answer for the same task).
func (s *Server) enqueueFailure(err error) response {
	var fe *tasks.FieldError
	if errors.As(err, &fe) {
		s.items.WithLabelValues("invalid").Inc()
		return problemResponse(newProblem(http.StatusBadRequest, fieldOf(err), detailOf(err)))
	}
	s.items.WithLabelValues("failed").Inc()
	var ue *tasks.UncertainError
	if errors.As(err, &ue) {
		return problemResponse(newProblem(http.StatusServiceUnavailable, "",
			fmt.Sprintf("may have been enqueued as %s: GET /v1/resends/%s tells; retrying the same request is safe", ue.ID, ue.ID)))
	}
	return problemResponse(newProblem(http.StatusServiceUnavailable, "", "not enqueued: "+err.Error()))
}

// state is asynq's state of a task, "unknown" if it cannot be read.
func (s *Server) state(ctx context.Context, queue, id string) string {
	_ = ctx // asynq's Inspector takes no context
	ti, err := s.insp.GetTaskInfo(queue, id)
	if err != nil {
		return "unknown"
	}
	return ti.State.String()
}

// Options a request may carry beside the batch line's fields.
const (
	fieldMaxRetry = "max_retry"
	fieldTimeout  = "timeout"
	fieldDelay    = "delay"
)

// splitOptions takes max_retry, timeout and delay out of a request object
// and returns the rest (a batch line) with the options they set on top of
// the server's defaults, validated by tasks.Options.Validate. A body that is
// not a JSON object is returned as is, for DecodeLine to diagnose.
func (s *Server) splitOptions(body []byte, producer string) ([]byte, tasks.Options, error) {
	o := s.defaults
	o.Producer = producer
	if !bytes.Contains(body, []byte(fieldMaxRetry)) && !bytes.Contains(body, []byte(fieldTimeout)) && !bytes.Contains(body, []byte(fieldDelay)) {
		return body, o, nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return body, o, nil
	}
	found := false
	if v, ok := fields[fieldMaxRetry]; ok {
		found = true
		delete(fields, fieldMaxRetry)
		var n int
		if err := json.Unmarshal(v, &n); err != nil {
			return nil, o, &tasks.FieldError{Field: fieldMaxRetry, Reason: "must be an integer"}
		}
		o.MaxRetry = n
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{fieldTimeout, &o.Timeout}, {fieldDelay, &o.Delay}} {
		v, ok := fields[f.name]
		if !ok {
			continue
		}
		found = true
		delete(fields, f.name)
		var str string
		if err := json.Unmarshal(v, &str); err != nil {
			return nil, o, &tasks.FieldError{Field: f.name, Reason: `must be a duration string like "60s"`}
		}
		d, err := time.ParseDuration(str)
		if err != nil {
			return nil, o, &tasks.FieldError{Field: f.name, Reason: fmt.Sprintf(`must be a duration string like "60s", got %q`, str)}
		}
		*f.dst = d
	}
	if !found {
		return body, o, nil
	}
	if err := o.Validate(); err != nil {
		return nil, o, err
	}
	line, err := json.Marshal(fields)
	return line, o, err
}

// BatchResult is one item's answer in a batch response.
type BatchResult struct {
	Index       int        `json:"index"`
	Status      int        `json:"status"`
	ID          string     `json:"id,omitempty"`
	DuplicateOf string     `json:"duplicate_of,omitempty"`
	Error       *ItemError `json:"error,omitempty"`
}

// BatchResponse is the answer of POST /v1/resends:batch.
type BatchResponse struct {
	Enqueued   int           `json:"enqueued"`
	Duplicates int           `json:"duplicates"`
	Failed     int           `json:"failed"`
	Results    []BatchResult `json:"results"`
}

func (s *Server) postBatch(w http.ResponseWriter, r *http.Request, producer string) {
	mt := mediaType(r)
	if mt != "application/json" && mt != "application/x-ndjson" && mt != "" {
		writeProblem(w, newProblem(http.StatusUnsupportedMediaType, "Content-Type", "want application/json (an array) or application/x-ndjson, got "+mt))
		return
	}
	body, ok := readBody(w, r, MaxBatchBytes)
	if !ok {
		return
	}
	s.idempotent(w, r, producer, body, func() response {
		ctx, cancel := workContext(r)
		defer cancel()
		return s.enqueueBatch(ctx, producer, mt, body)
	})
}

// workLimit bounds the enqueue work of one request.
const workLimit = 5 * time.Minute

// workContext is the context of a request's enqueue work: it goes on when
// the client hangs up, so that a request is done whole or not begun (a
// batch is never cut halfway by a dropped connection, and the answer an
// Idempotency-Key stores is the whole one).
func workContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), workLimit)
}

func (s *Server) enqueueBatch(ctx context.Context, producer, mt string, body []byte) response {
	var raws [][]byte
	var lineErrs []error
	if mt == "application/x-ndjson" {
		_ = tasks.Lines(bytes.NewReader(body))(func(it tasks.BatchItem) bool {
			raws, lineErrs = append(raws, it.Line), append(lineErrs, it.Err)
			return len(raws) <= MaxBatchItems
		})
	} else {
		dec := json.NewDecoder(bytes.NewReader(body))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
			return problemResponse(newProblem(http.StatusBadRequest, "body", "must be a JSON array of resend objects (or send application/x-ndjson)"))
		}
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return problemResponse(newProblem(http.StatusBadRequest, "body", fmt.Sprintf("invalid JSON at item %d: %v", len(raws), err)))
			}
			raws, lineErrs = append(raws, raw), append(lineErrs, nil)
			if len(raws) > MaxBatchItems {
				break
			}
		}
		if len(raws) <= MaxBatchItems {
			if _, err := dec.Token(); err != nil {
				return problemResponse(newProblem(http.StatusBadRequest, "body", "invalid JSON: "+err.Error()))
			}
			if _, err := dec.Token(); err != io.EOF {
				return problemResponse(newProblem(http.StatusBadRequest, "body", "invalid JSON: data after the array"))
			}
		}
	}
	if len(raws) > MaxBatchItems {
		return problemResponse(newProblem(http.StatusRequestEntityTooLarge, "body", fmt.Sprintf("must hold at most %d items", MaxBatchItems)))
	}
	if len(raws) == 0 {
		return problemResponse(newProblem(http.StatusBadRequest, "body", "must hold at least one item"))
	}
	items := make([]tasks.BatchItem, len(raws))
	for i, raw := range raws {
		it := tasks.BatchItem{N: i + 1, Err: lineErrs[i]}
		if it.Err == nil {
			line, o, err := s.splitOptions(raw, producer)
			it.Line, it.Opts, it.Err = line, &o, err
		}
		items[i] = it
	}
	out := BatchResponse{Results: make([]BatchResult, len(items))}
	defaults := s.defaults
	defaults.Producer = producer
	_, err := s.enq.EnqueueBatch(ctx, defaults, func(yield func(tasks.BatchItem) bool) error {
		for _, it := range items {
			if !yield(it) {
				return nil
			}
		}
		return nil
	}, s.cfg.Concurrency, func(br tasks.BatchResult) {
		res := BatchResult{Index: br.N - 1}
		var ue *tasks.UncertainError
		switch {
		case br.Err == nil && br.Duplicate:
			res.Status, res.ID, res.DuplicateOf = http.StatusOK, br.ID, br.ID
			out.Duplicates++
			s.items.WithLabelValues("duplicate").Inc()
		case br.Err == nil:
			res.Status, res.ID = http.StatusAccepted, br.ID
			out.Enqueued++
			s.items.WithLabelValues("enqueued").Inc()
		case errors.As(br.Err, &ue):
			res.Status = http.StatusServiceUnavailable
			res.Error = &ItemError{Detail: fmt.Sprintf("may have been enqueued as %s: GET /v1/resends/%s tells; retrying the item is safe", ue.ID, ue.ID)}
			out.Failed++
			s.items.WithLabelValues("failed").Inc()
		case isRequestError(br.Err):
			res.Status, res.Error = http.StatusBadRequest, itemError(br.Err)
			out.Failed++
			s.items.WithLabelValues("invalid").Inc()
		default:
			res.Status = http.StatusServiceUnavailable
			res.Error = &ItemError{Detail: redact.Emails("not enqueued: " + br.Err.Error())}
			out.Failed++
			s.items.WithLabelValues("failed").Inc()
		}
		out.Results[res.Index] = res
	}, nil)
	if err != nil {
		return problemResponse(newProblem(http.StatusServiceUnavailable, "", err.Error()))
	}
	resp := jsonResponse(http.StatusOK, out)
	for _, r := range out.Results {
		resp.transient = resp.transient || r.Status >= 500
	}
	return resp
}

// isRequestError tells an item's own fault (validation) from Redis's.
// DecodeLine's errors and *tasks.FieldError are the item's; Enqueue's
// other errors are Redis's.
func isRequestError(err error) bool {
	var fe *tasks.FieldError
	if errors.As(err, &fe) {
		return true
	}
	var ue *tasks.UncertainError
	if errors.As(err, &ue) || errors.Is(err, tasks.ErrDedupBusy) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	msg := err.Error()
	return !strings.HasPrefix(msg, "redis: ") && !strings.HasPrefix(msg, "not enqueued, Redis refused")
}

func (s *Server) getResend(w http.ResponseWriter, r *http.Request, _ string) {
	id := r.PathValue("id")
	if id == "" || len(id) > 128 {
		writeProblem(w, newProblem(http.StatusNotFound, "id", "no such task"))
		return
	}
	st, err := taskstatus.Get(r.Context(), s.cfg.Redis, id)
	if errors.Is(err, taskstatus.ErrNotFound) {
		writeProblem(w, newProblem(http.StatusNotFound, "id", err.Error()))
		return
	}
	if err != nil {
		s.unavailable(w, err)
		return
	}
	b, err := json.Marshal(st)
	if err != nil {
		s.unavailable(w, err)
		return
	}
	response{Status: http.StatusOK, CType: "application/json", Body: redact.JSON(b)}.write(w)
}

// idemRecord is the stored state of one Idempotency-Key: pending (Pending
// holds the owner's random token) or the response (Resp).
type idemRecord struct {
	Pending string    `json:"pending,omitempty"`
	FP      string    `json:"fp"`
	Resp    *response `json:"resp,omitempty"`
}

// idempotent runs run once per (producer, Idempotency-Key) when the
// request has the header: the first request's response is stored for
// IdempotencyTTL and replayed to every later request with the same key and
// the same body (Idempotent-Replayed: true); another body with the key
// answers 422. A request finding the key pending (a concurrent request)
// waits for its response up to idemWait, then answers 409. Responses of
// 5xx are not stored: the key is released, a retry runs again.
func (s *Server) idempotent(w http.ResponseWriter, r *http.Request, producer string, body []byte, run func() response) {
	key := r.Header.Get("Idempotency-Key")
	if _, present := r.Header["Idempotency-Key"]; !present {
		run().write(w)
		return
	}
	if err := checkIdempotencyKey(key); err != nil {
		writeProblem(w, newProblem(http.StatusBadRequest, "Idempotency-Key", err.Error()))
		return
	}
	ctx := r.Context()
	scopeSum := sha256.Sum256([]byte(producer + "\x00" + key))
	scope := hex.EncodeToString(scopeSum[:])
	fpSum := sha256.Sum256(append([]byte(r.URL.Path+"\x00"), body...))
	fp := hex.EncodeToString(fpSum[:])
	pending, _ := json.Marshal(idemRecord{Pending: uuid.NewString(), FP: fp})
	deadline := time.Now().Add(s.idemWait)
	for {
		taken, existing, err := s.rdb.TakeIdempotency(ctx, scope, pending, s.idemLease)
		if err != nil {
			s.unavailable(w, err)
			return
		}
		if taken {
			resp := run()
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if resp.Status < 500 && !resp.transient {
				final, _ := json.Marshal(idemRecord{FP: fp, Resp: &resp})
				_, _ = s.rdb.FinishIdempotency(bg, scope, pending, final, IdempotencyTTL)
			} else {
				_ = s.rdb.ReleaseIdempotency(bg, scope, pending)
			}
			resp.write(w)
			return
		}
		if existing != nil {
			var rec idemRecord
			if err := json.Unmarshal(existing, &rec); err != nil {
				s.unavailable(w, fmt.Errorf("unreadable idempotency record"))
				return
			}
			if rec.FP != fp {
				writeProblem(w, newProblem(http.StatusUnprocessableEntity, "Idempotency-Key",
					"was already used with a different request; use a new key for a new request"))
				return
			}
			if rec.Resp != nil {
				w.Header().Set("Idempotent-Replayed", "true")
				rec.Resp.write(w)
				return
			}
			if time.Now().After(deadline) {
				w.Header().Set("Retry-After", "1")
				writeProblem(w, newProblem(http.StatusConflict, "Idempotency-Key", "a request with this key is still in progress; retry"))
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkIdempotencyKey: 1-255 printable ASCII characters.
func checkIdempotencyKey(k string) error {
	if k == "" || len(k) > MaxIdempotencyKeyLen {
		return fmt.Errorf("must be 1-%d characters", MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < ' ' || k[i] > '~' {
			return errors.New("must be printable ASCII")
		}
	}
	return nil
}
