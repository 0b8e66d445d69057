// Package opsserver is the worker's operations HTTP surface:
//
//	/healthz     200 "ok" while the process serves HTTP
//	/readyz      200 when Redis answers PING within the ready timeout (1 s)
//	             and the asynq server is running; 503 with the reason otherwise
//	/metrics     the Prometheus handler it is given (internal/metrics)
//	/dashboard/  asynqmon, behind HTTP basic auth, optionally read-only
//
// The dashboard is off unless credentials are configured (or NoAuth is set
// explicitly): asynqmon has no authentication of its own and even its GET
// endpoints show payloads and Redis INFO. Email addresses are masked on the
// way out, twice over: payloads and results are decoded and masked as JSON
// (redact.JSON, which also catches \u0040-escaped addresses) by asynqmon's
// formatters, and every response of asynqmon's JSON API is masked as a whole
// (last errors, queue and task fields included), so no field it adds later
// can show an address. The data in Redis stays verbatim: replay needs it.
//
// The package only builds the http.Handler; the caller owns the listener and
// the http.Server (with its timeouts) and calls Close when done.
package opsserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/redisconn"
)

// DashboardRoot is the URL path asynqmon is mounted under.
const DashboardRoot = "/dashboard"

// DefaultReadyTimeout bounds the Redis PING of /readyz.
const DefaultReadyTimeout = time.Second

// Config configures New.
type Config struct {
	// RedisURL (redis:// or rediss://, with user, password and database)
	// is what the dashboard builds its own Redis client from. Required when
	// the dashboard is on.
	RedisURL string
	// Redis is pinged by /readyz. Required.
	Redis redis.UniversalClient
	// Running reports whether the asynq server is running. Required.
	Running func() bool
	// Metrics serves /metrics; nil leaves /metrics unrouted (404).
	Metrics http.Handler
	// Dashboard configures /dashboard/.
	Dashboard DashboardConfig
	// Logger receives the startup summary; nil discards it.
	Logger *slog.Logger
	// ReadyTimeout bounds the Redis PING of /readyz; 0 means 1 s.
	ReadyTimeout time.Duration
}

// DashboardConfig configures the asynqmon dashboard. With neither User nor
// Password, and NoAuth false, the dashboard is off.
type DashboardConfig struct {
	// User and Password are the basic auth credentials; both or neither.
	User, Password string
	// NoAuth serves the dashboard without authentication. It must be set
	// explicitly and excludes credentials.
	NoAuth bool
	// ReadOnly refuses every change (asynqmon answers non-GET API calls
	// with 405 and hides the buttons).
	ReadOnly bool
}

// mode describes the dashboard setting in words, for the startup log.
func (d DashboardConfig) mode() string {
	switch {
	case d.User == "" && d.Password == "" && !d.NoAuth:
		return "off"
	case d.NoAuth && d.ReadOnly:
		return "on, read-only, no authentication"
	case d.NoAuth:
		return "on, no authentication"
	case d.ReadOnly:
		return "on, read-only, basic auth"
	default:
		return "on, basic auth"
	}
}

// Server is the operations handler and the resources behind it.
type Server struct {
	handler   http.Handler
	dashboard *asynqmon.HTTPHandler // nil when off
}

// New validates cfg, builds the handler and logs how the dashboard is set
// up (never the password).
func New(cfg Config) (*Server, error) {
	if cfg.Redis == nil {
		return nil, errors.New("opsserver: Config.Redis is required")
	}
	if cfg.Running == nil {
		return nil, errors.New("opsserver: Config.Running is required")
	}
	d := cfg.Dashboard
	on := d.NoAuth || d.User != "" || d.Password != ""
	switch {
	case d.NoAuth && (d.User != "" || d.Password != ""):
		return nil, errors.New("opsserver: dashboard: NoAuth is set together with credentials; choose one")
	case !d.NoAuth && (d.User == "") != (d.Password == ""):
		return nil, errors.New("opsserver: dashboard: both a user and a password are needed")
	case d.User != "" && strings.Contains(d.User, ":"):
		return nil, errors.New("opsserver: dashboard: the user must not contain ':' (basic auth)")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	readyTimeout := cfg.ReadyTimeout
	if readyTimeout <= 0 {
		readyTimeout = DefaultReadyTimeout
	}

	s := &Server{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.Handle("GET /readyz", readyHandler(cfg.Redis, cfg.Running, readyTimeout))
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}

	if on {
		if cfg.RedisURL == "" {
			return nil, errors.New("opsserver: dashboard: no Redis URL")
		}
		opt, err := redisconn.AsynqOpt(cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("opsserver: dashboard: invalid Redis URL: %w", err)
		}
		s.dashboard = asynqmon.New(asynqmon.Options{
			RootPath:         DashboardRoot,
			RedisConnOpt:     opt,
			PayloadFormatter: asynqmon.PayloadFormatterFunc(formatMasked),
			ResultFormatter:  asynqmon.ResultFormatterFunc(formatMasked),
			ReadOnly:         d.ReadOnly,
		})
		var h http.Handler = maskAPI(manifestCredentials(s.dashboard))
		if !d.NoAuth {
			h = basicAuth(d.User, d.Password, h)
		}
		mux.Handle(DashboardRoot+"/", h)
	} else {
		mux.HandleFunc(DashboardRoot+"/", func(w http.ResponseWriter, _ *http.Request) {
			text(w, http.StatusNotFound, "dashboard is disabled: set DASHBOARD_USER and DASHBOARD_PASSWORD "+
				"(or DASHBOARD_PASSWORD_FILE) on the worker to enable it")
		})
	}
	s.handler = mux

	attrs := []any{"dashboard", d.mode(), "path", DashboardRoot + "/"}
	if d.User != "" {
		attrs = append(attrs, "user", d.User)
	}
	level := slog.LevelInfo
	if d.NoAuth {
		level = slog.LevelWarn // anyone who reaches the port can replay and delete tasks
	}
	logger.Log(context.Background(), level, "ops http configured", attrs...)
	return s, nil
}

// Handler returns the handler serving every route.
func (s *Server) Handler() http.Handler { return s.handler }

// Close releases the dashboard's Redis connections.
func (s *Server) Close() error {
	if s.dashboard == nil {
		return nil
	}
	return s.dashboard.Close()
}

func readyHandler(rdb redis.UniversalClient, running func() bool, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		if err := rdb.Ping(ctx).Err(); err != nil {
			reason := "redis: no answer to PING"
			if errors.Is(err, context.DeadlineExceeded) {
				reason += " within " + timeout.String()
			}
			text(w, http.StatusServiceUnavailable, reason)
			return
		}
		if !running() {
			text(w, http.StatusServiceUnavailable, "asynq server is not running")
			return
		}
		text(w, http.StatusOK, "ready")
	})
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// formatMasked shows a payload or result with email addresses masked: a
// JSON one decoded and re-encoded (escaped addresses are caught), any other
// as text; bytes that are not printable text are not shown.
func formatMasked(taskType string, b []byte) string {
	if json.Valid(b) {
		return string(redact.JSON(b))
	}
	s := asynqmon.DefaultPayloadFormatter.FormatPayload(taskType, b)
	return redact.Emails(s)
}

// maskAPI masks email addresses in every response of asynqmon's API (JSON
// decoded and re-encoded, anything else as text). asynqmon has formatters
// for payloads and results only; last errors and whatever else it shows go
// through here.
func maskAPI(next http.Handler) http.Handler {
	apiPrefix := DashboardRoot + "/api/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, apiPrefix) {
			next.ServeHTTP(w, r)
			return
		}
		bw := &bufferWriter{ResponseWriter: w}
		next.ServeHTTP(bw, r)
		body := bw.buf.Bytes()
		if len(body) > 0 {
			if json.Valid(body) { // asynqmon sets no Content-Type on its JSON
				body = append(redact.JSON(body), '\n')
			} else {
				body = []byte(redact.Emails(string(body)))
			}
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		code := bw.code
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
		_, _ = w.Write(body)
	})
}

// bufferWriter holds a whole response back so that it can be masked.
type bufferWriter struct {
	http.ResponseWriter
	code int
	buf  bytes.Buffer
}

func (w *bufferWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *bufferWriter) Write(b []byte) (int, error) { return w.buf.Write(b) }

// basicAuth demands user and password. Both are compared in constant time
// (over their SHA-256, so that lengths do not leak either).
func basicAuth(user, password string, next http.Handler) http.Handler {
	wantUser := sha256.Sum256([]byte(user))
	wantPass := sha256.Sum256([]byte(password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		gotUser := sha256.Sum256([]byte(u))
		gotPass := sha256.Sum256([]byte(p))
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
		passOK := subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || userOK&passOK != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="certmail dashboard", charset="UTF-8"`)
			text(w, http.StatusUnauthorized, "unauthorized")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// manifestCredentials adds crossorigin="use-credentials" to the index page's
// <link rel="manifest">: browsers fetch the manifest without credentials
// otherwise and get a 401 behind basic auth (asynqmon#285). asynqmon renders
// the index without a Content-Type (static files get one), so a response
// without one that starts like HTML is taken for the index.
func manifestCredentials(next http.Handler) http.Handler {
	apiPrefix := DashboardRoot + "/api/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || strings.HasPrefix(r.URL.Path, apiPrefix) {
			next.ServeHTTP(w, r)
			return
		}
		iw := &indexWriter{ResponseWriter: w}
		next.ServeHTTP(iw, r)
		iw.finish()
	})
}

var (
	manifestLink = []byte(`<link rel="manifest" `)
	manifestCred = []byte(`<link rel="manifest" crossorigin="use-credentials" `)
)

// indexWriter buffers a response that has no Content-Type when its first
// write comes, and passes any other through untouched.
type indexWriter struct {
	http.ResponseWriter
	decided   bool
	buffering bool
	code      int
	buf       bytes.Buffer
}

func (w *indexWriter) decide() {
	if !w.decided {
		w.decided = true
		w.buffering = w.Header().Get("Content-Type") == ""
	}
}

func (w *indexWriter) WriteHeader(code int) {
	w.decide()
	if w.buffering {
		w.code = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *indexWriter) Write(b []byte) (int, error) {
	w.decide()
	if w.buffering {
		return w.buf.Write(b)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *indexWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *indexWriter) finish() {
	if !w.buffering {
		return
	}
	body := w.buf.Bytes()
	h := w.Header()
	head := body[:min(len(body), 512)]
	if bytes.HasPrefix(bytes.ToLower(bytes.TrimSpace(head)), []byte("<!doctype html")) {
		body = bytes.Replace(body, manifestLink, manifestCred, 1)
		h.Set("Content-Type", "text/html; charset=utf-8")
	} else {
		h.Set("Content-Type", http.DetectContentType(head))
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	code := w.code
	if code == 0 {
		code = http.StatusOK
	}
	w.ResponseWriter.WriteHeader(code)
	_, _ = w.ResponseWriter.Write(body)
}
