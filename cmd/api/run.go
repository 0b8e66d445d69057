package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/certmail/certmail/internal/api"
	"github.com/certmail/certmail/internal/cli"
	"github.com/certmail/certmail/internal/providers/httpx"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redact"
	"github.com/certmail/certmail/internal/redisconn"
)

// DefaultAddr is API_ADDR's default: loopback, so that exposing the API is
// a decision.
const DefaultAddr = "127.0.0.1:8081"

const usage = `Usage: api [flags]

Serves the HTTP enqueue API (POST /v1/resends, POST /v1/resends:batch,
GET /v1/resends/{id}, GET /v1/openapi.yaml, /healthz, /readyz, /metrics).
SIGHUP re-reads the tokens file.

Flags:
`

type config struct {
	addr       string
	redisURL   string
	tokensFile string
	rateLimit  string
	noAuth     bool
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// run serves until ctx ends. listening, when set, is told the address
// served (tests listen on port 0).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, listening func(addr string)) int {
	err := serve(ctx, args, stdout, stderr, getenv, listening)
	if errors.Is(err, cli.ErrHelp) {
		return cli.ExitOK
	}
	return cli.Report(stderr, "api", err)
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, listening func(addr string)) error {
	var c config
	fs := cli.NewFlagSet("api", usage)
	fs.StringVar(&c.addr, "addr", envOr(getenv, "API_ADDR", DefaultAddr), "listen address (env API_ADDR)")
	cli.RedisURLFlag(fs, &c.redisURL, getenv)
	fs.StringVar(&c.tokensFile, "tokens-file", getenv("API_TOKENS_FILE"), "file of name:token lines, re-read on SIGHUP (env API_TOKENS_FILE)")
	fs.StringVar(&c.rateLimit, "rate-limit", envOr(getenv, "API_RATE_LIMIT", api.DefaultRateLimit), "requests per token, N/DURATION[,N/DURATION…] across all replicas, or off (env API_RATE_LIMIT)")
	fs.BoolVar(&c.noAuth, "no-auth", false, "serve without tokens (only on a loopback --addr; for the demo)")
	pos, err := cli.Parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cli.Usagef("unexpected argument %q (see --help)", pos[0])
	}
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return cli.Usagef("--addr: want HOST:PORT, got %q", c.addr)
	}
	rules, err := ratelimit.ParseRules(c.rateLimit)
	if err != nil {
		return cli.Usagef("--rate-limit: %v", err)
	}
	if _, err := redisconn.Parse(c.redisURL); err != nil {
		return cli.Usagef("--redis-url: %v", err)
	}
	var tokens *api.Tokens
	switch {
	case c.tokensFile != "" && c.noAuth:
		return cli.Usagef("--no-auth: not with --tokens-file (API_TOKENS_FILE)")
	case c.tokensFile != "":
		if tokens, err = api.LoadTokens(c.tokensFile); err != nil {
			return cli.Usagef("--tokens-file: %v", err)
		}
	case !c.noAuth:
		return cli.Usagef("--tokens-file: required (API_TOKENS_FILE); --no-auth only on a loopback --addr")
	case !httpx.IsLoopback(host):
		return cli.Usagef("--no-auth: only with a loopback --addr (like 127.0.0.1:8081), got %q", c.addr)
	}

	redisconn.SetLogger(nil)
	log := slog.New(redact.NewHandler(slog.NewJSONHandler(stderr, nil)))
	rdb, err := redisconn.Connect(ctx, c.redisURL, 5*time.Second)
	if err != nil {
		return err
	}
	defer rdb.Close()
	redisconn.SetLogger(log)

	srv := api.New(api.Config{Redis: rdb, Tokens: tokens, RateLimit: rules, Logger: log})
	defer srv.Close()
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", c.addr, err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute,
		IdleTimeout: 2 * time.Minute}

	if tokens != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					if err := tokens.Reload(); err != nil {
						log.Error("tokens file not reloaded; the previous tokens stay", "error", err.Error())
						continue
					}
					log.Info("tokens file reloaded", "tokens", tokens.Len())
				}
			}
		}()
	}
	auth := "tokens"
	if tokens == nil {
		auth = "none (--no-auth, loopback)"
	}
	log.Info("api listening", "addr", ln.Addr().String(), "redis", redisconn.Redact(c.redisURL), "auth", auth, "rate_limit", c.rateLimit)
	if listening != nil {
		listening(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	log.Info("api stopped")
	return nil
}
