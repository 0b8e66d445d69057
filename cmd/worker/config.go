package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redisconn"
)

// config is everything the worker reads from its environment and flags.
// Secrets come only from the environment (or files named there): a flag
// value is visible to every user of the machine in the process list.
type config struct {
	redisURL         string
	concurrency      int
	opensrsUsername  string
	opensrsKey       secret
	opensrsURL       string
	digicertKey      secret
	digicertURL      string
	opensrsRate      []ratelimit.Rule
	digicertRate     []ratelimit.Rule
	providerTimeout  time.Duration
	retryBase        time.Duration
	retryMax         time.Duration
	rateLimitWait    time.Duration
	httpAddr         string
	shutdownTimeout  time.Duration
	reconcileEvery   time.Duration
	retention        time.Duration
	deadRetention    time.Duration // 0 keeps dead letters forever
	dashboardUser    string
	dashboardPass    secret
	dashboardNoAuth  bool
	dashboardRO      bool
	logLevel         string
	demo             bool
	demoTasks        bool
	demoRedis        bool          // --demo with an explicit --redis-url
	taskCheck        time.Duration // asynq TaskCheckInterval; tests shorten it
	delayedTaskCheck time.Duration // asynq DelayedTaskCheckInterval
}

// secret is a string that never prints.
type secret string

func (secret) String() string   { return "[redacted]" }
func (secret) GoString() string { return "[redacted]" }

// configError is reported as one line, exit code 2.
type configError struct{ msg string }

func (e configError) Error() string { return e.msg }

func configErrf(format string, args ...any) error { return configError{fmt.Sprintf(format, args...)} }

const usageHead = `Usage: worker [flags]
       worker --demo
       worker healthcheck [URL]

Consumes certmail resend tasks (queues opensrs and digicert) and calls the providers.
A provider without credentials is not consumed: its tasks wait in Redis.

Environment (flags override):
  REDIS_URL                    Redis URL (default ` + redisconn.DefaultURL + `)
  WORKER_CONCURRENCY           tasks processed at once (default 20)
  OPENSRS_USERNAME             OpenSRS reseller username
  OPENSRS_API_KEY[_FILE]       OpenSRS API key, or a file holding it
  OPENSRS_URL                  default ` + opensrs.LiveURL + ` (test: ` + opensrs.TestURL + `)
  DIGICERT_API_KEY[_FILE]      DigiCert CertCentral API key, or a file holding it
  DIGICERT_URL                 default ` + digicert.USURL + ` (EU: ` + digicert.EUURL + `)
  DIGICERT_RATE_LIMIT          requests allowed per API key across all workers (default ` + ratelimit.DigiCertDefault + `; off disables)
  OPENSRS_RATE_LIMIT           the same for OpenSRS (default off: no limit is documented), e.g. 10/1s
  PROVIDER_TIMEOUT             one provider call, all included (default 90s)
  RETRY_BASE, RETRY_MAX        exponential retry schedule (default 30s doubling to 1h)
  RATE_LIMIT_WAIT              wait after a rate limit without a hint (default 30s)
  HTTP_ADDR                    /healthz /readyz /metrics /dashboard/ (default 127.0.0.1:8080; "off" disables)
  SHUTDOWN_TIMEOUT             wait for in-flight tasks on SIGTERM before requeueing them (default 25s;
                               then up to 10s more while the interrupted attempts are recorded)
  RECONCILE_INTERVAL           how often asynq's archive is swept into dead letters (default 1m)
  OUTCOME_RETENTION            how long attempt histories and success marks are kept (default 168h, at least 1h)
  DEADLETTER_RETENTION         how long a dead letter is kept unless replayed or deleted (default 2160h = 90 days, at least 24h; 0 keeps forever)
  DASHBOARD_USER, DASHBOARD_PASSWORD[_FILE]   basic auth for /dashboard/ (off without them)
  DASHBOARD_READONLY           true mounts the dashboard read-only
  LOG_LEVEL                    debug, info, warn or error (default info)

Flags:
`

func loadConfig(args []string, stdout io.Writer, getenv func(string) string) (*config, error) {
	c := &config{}
	var errs []error
	str := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	dur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, configErrf("%s: must be a duration like 30s or 1h, got %q", name, v))
			return def
		}
		return d
	}
	integer := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, configErrf("%s: must be a whole number, got %q", name, v))
			return def
		}
		return n
	}
	boolean := func(name string) bool {
		v := getenv(name)
		if v == "" {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, configErrf("%s: must be true or false, got %q", name, v))
		}
		return b
	}
	secretEnv := func(name string) secret {
		v := getenv(name)
		f := getenv(name + "_FILE")
		if v != "" && f != "" {
			errs = append(errs, configErrf("%s and %s_FILE: set only one", name, name))
			return ""
		}
		if f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, configErrf("%s_FILE: cannot read %s: %v", name, f, errors.Unwrap(err)))
				return ""
			}
			return secret(strings.TrimSpace(string(b)))
		}
		return secret(v)
	}

	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usageHead); fs.PrintDefaults() }
	fs.StringVar(&c.redisURL, "redis-url", str("REDIS_URL", redisconn.DefaultURL), "Redis URL (env REDIS_URL)")
	fs.IntVar(&c.concurrency, "concurrency", integer("WORKER_CONCURRENCY", 20), "tasks processed at once (env WORKER_CONCURRENCY)")
	fs.StringVar(&c.opensrsUsername, "opensrs-username", str("OPENSRS_USERNAME", ""), "OpenSRS reseller username (env OPENSRS_USERNAME)")
	fs.StringVar(&c.opensrsURL, "opensrs-url", str("OPENSRS_URL", opensrs.LiveURL), "OpenSRS XCP base URL (env OPENSRS_URL)")
	fs.StringVar(&c.digicertURL, "digicert-url", str("DIGICERT_URL", digicert.USURL), "DigiCert Services API base URL (env DIGICERT_URL)")
	var opensrsRate, digicertRate string
	fs.StringVar(&opensrsRate, "opensrs-rate-limit", str("OPENSRS_RATE_LIMIT", "off"), "OpenSRS requests allowed, N/PERIOD[,N/PERIOD], or off (env OPENSRS_RATE_LIMIT)")
	fs.StringVar(&digicertRate, "digicert-rate-limit", str("DIGICERT_RATE_LIMIT", ratelimit.DigiCertDefault), "DigiCert requests allowed, N/PERIOD[,N/PERIOD], or off (env DIGICERT_RATE_LIMIT)")
	fs.DurationVar(&c.providerTimeout, "provider-timeout", dur("PROVIDER_TIMEOUT", 90*time.Second), "limit of one provider call (env PROVIDER_TIMEOUT)")
	fs.DurationVar(&c.retryBase, "retry-base", dur("RETRY_BASE", 30*time.Second), "first retry delay, doubling (env RETRY_BASE)")
	fs.DurationVar(&c.retryMax, "retry-max", dur("RETRY_MAX", time.Hour), "longest retry delay (env RETRY_MAX)")
	fs.DurationVar(&c.rateLimitWait, "rate-limit-wait", dur("RATE_LIMIT_WAIT", 30*time.Second), "wait after a rate limit without hint (env RATE_LIMIT_WAIT)")
	fs.StringVar(&c.httpAddr, "http-addr", str("HTTP_ADDR", "127.0.0.1:8080"), "health, metrics and dashboard address, or off (env HTTP_ADDR)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", dur("SHUTDOWN_TIMEOUT", 25*time.Second), "grace for in-flight tasks on shutdown (env SHUTDOWN_TIMEOUT)")
	fs.DurationVar(&c.reconcileEvery, "reconcile-interval", dur("RECONCILE_INTERVAL", time.Minute), "archive-to-dead-letter sweep period (env RECONCILE_INTERVAL)")
	fs.DurationVar(&c.retention, "outcome-retention", dur("OUTCOME_RETENTION", 7*24*time.Hour), "attempt history retention (env OUTCOME_RETENTION)")
	fs.DurationVar(&c.deadRetention, "deadletter-retention", dur("DEADLETTER_RETENTION", deadletter.DefaultRetention), "dead-letter retention, 0 keeps forever (env DEADLETTER_RETENTION)")
	fs.StringVar(&c.dashboardUser, "dashboard-user", str("DASHBOARD_USER", ""), "dashboard basic-auth user (env DASHBOARD_USER)")
	fs.BoolVar(&c.dashboardNoAuth, "dashboard-no-auth", false, "serve the dashboard WITHOUT authentication (loopback demos only)")
	fs.BoolVar(&c.dashboardRO, "dashboard-readonly", boolean("DASHBOARD_READONLY"), "read-only dashboard (env DASHBOARD_READONLY)")
	fs.StringVar(&c.logLevel, "log-level", str("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	fs.BoolVar(&c.demo, "demo", false, "run everything in one process: embedded Redis, provider simulators, sample tasks")
	fs.BoolVar(&c.demoTasks, "demo-samples", true, "with --demo: enqueue the sample tasks")
	c.opensrsKey = secretEnv("OPENSRS_API_KEY")
	c.digicertKey = secretEnv("DIGICERT_API_KEY")
	c.dashboardPass = secretEnv("DASHBOARD_PASSWORD")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, flag.ErrHelp
		}
		return nil, configErrf("%v (see worker --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, configErrf("unexpected argument %q (see worker --help)", fs.Arg(0))
	}
	var err error
	if c.opensrsRate, err = ratelimit.ParseRules(opensrsRate); err != nil {
		errs = append(errs, configErrf("OPENSRS_RATE_LIMIT (--opensrs-rate-limit): %v", err))
	}
	if c.digicertRate, err = ratelimit.ParseRules(digicertRate); err != nil {
		errs = append(errs, configErrf("DIGICERT_RATE_LIMIT (--digicert-rate-limit): %v", err))
	}
	if len(errs) > 0 {
		return nil, errs[0]
	}
	// With --demo, an explicit --redis-url replaces the embedded Redis: the
	// simulators then run against a real server (CI's end-to-end check).
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "redis-url" {
			c.demoRedis = true
		}
	})
	return c, c.validate()
}

func (c *config) validate() error {
	switch {
	case c.concurrency < 1:
		return configErrf("WORKER_CONCURRENCY (--concurrency): must be at least 1, got %d", c.concurrency)
	case c.providerTimeout < time.Second:
		return configErrf("PROVIDER_TIMEOUT (--provider-timeout): must be at least 1s")
	case c.retryBase < time.Second:
		return configErrf("RETRY_BASE (--retry-base): must be at least 1s (asynq schedules in whole seconds)")
	case c.retryMax < c.retryBase:
		return configErrf("RETRY_MAX (--retry-max): must be at least RETRY_BASE")
	case c.rateLimitWait < time.Second:
		return configErrf("RATE_LIMIT_WAIT (--rate-limit-wait): must be at least 1s")
	case c.shutdownTimeout < time.Second:
		return configErrf("SHUTDOWN_TIMEOUT (--shutdown-timeout): must be at least 1s")
	case c.reconcileEvery < time.Second:
		return configErrf("RECONCILE_INTERVAL (--reconcile-interval): must be at least 1s")
	case c.deadRetention != 0 && c.deadRetention < deadletter.MinRetention:
		return configErrf("DEADLETTER_RETENTION (--deadletter-retention): must be 0 (keep forever) or at least %s, got %s", deadletter.MinRetention, c.deadRetention)
	case c.retention < minRetention:
		return configErrf("OUTCOME_RETENTION (--outcome-retention): must be at least %s (success marks must outlive asynq's crash recovery, or a redelivered task is resent), got %s", minRetention, c.retention)
	case (c.dashboardUser == "") != (c.dashboardPass == ""):
		return configErrf("DASHBOARD_USER and DASHBOARD_PASSWORD: set both or neither")
	case c.dashboardNoAuth && c.dashboardUser != "":
		return configErrf("--dashboard-no-auth: not with DASHBOARD_USER and DASHBOARD_PASSWORD; choose one")
	case strings.Contains(c.dashboardUser, ":"):
		return configErrf("DASHBOARD_USER (--dashboard-user): must not contain ':' (basic auth)")
	}
	if c.httpAddr != "off" {
		if err := checkListenAddr(c.httpAddr); err != nil {
			return configErrf("HTTP_ADDR (--http-addr): %v (host:port, or off)", err)
		}
	}
	if _, err := redisconn.Parse(c.redisURL); err != nil && (!c.demo || c.demoRedis) {
		return configErrf("REDIS_URL (--redis-url): %v", err)
	}
	switch strings.ToLower(c.logLevel) {
	case "debug", "info", "warn", "error":
	default:
		return configErrf("LOG_LEVEL (--log-level): must be debug, info, warn or error, got %q", c.logLevel)
	}
	if c.opensrsUsername != "" && c.opensrsKey == "" {
		return configErrf("OPENSRS_API_KEY (or OPENSRS_API_KEY_FILE): required when OPENSRS_USERNAME is set")
	}
	if c.opensrsKey != "" && c.opensrsUsername == "" {
		return configErrf("OPENSRS_USERNAME (--opensrs-username): required when OPENSRS_API_KEY is set")
	}
	if !c.demo && c.opensrsKey == "" && c.digicertKey == "" {
		return configErrf("no provider configured: set OPENSRS_USERNAME and OPENSRS_API_KEY (or OPENSRS_API_KEY_FILE), and/or DIGICERT_API_KEY (or DIGICERT_API_KEY_FILE); or run worker --demo")
	}
	if !c.demo { // the demo points the clients at its simulators
		if _, err := buildClients(c, nil); err != nil {
			return err
		}
	}
	return nil
}

// minRetention is the floor of OUTCOME_RETENTION. The success mark that
// stops a redelivered task from emailing twice lives that long, and asynq's
// recoverer redelivers a crashed worker's task after 1–3 minutes (lease
// 30 s, cutoff 30 s, sweep every minute, plus the retry delay): an hour
// leaves a wide margin over that and over a worker down for a while.
const minRetention = time.Hour

// checkListenAddr rejects an address net.Listen would refuse for its form,
// so that the mistake exits 2 before anything is connected. A numeric port
// is required (0 picks a free one).
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if ae := (*net.AddrError)(nil); errors.As(err, &ae) {
		return fmt.Errorf("%q: %s", addr, ae.Err)
	} else if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port must be a number from 0 to 65535", addr)
	}
	return nil
}
