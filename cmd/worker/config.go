package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/cli"
	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/outage"
	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/httpx"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/redisconn"
	"github.com/certmail/certmail/internal/tasks"
)

// config is everything the worker reads from its environment and flags.
// Secrets come only from the environment (or files named there): a flag
// value is visible to every user of the machine in the process list.
type config struct {
	redisURL         string
	concurrency      int
	opensrsConc      int // 0: concurrency
	digicertConc     int
	opensrsUsername  string
	opensrsKey       secret
	opensrsURL       string
	digicertKey      secret
	digicertURL      string
	opensrsRateSpec  string // as given; parsed into opensrsRate
	digicertRateSpec string
	opensrsRate      []ratelimit.Rule
	digicertRate     []ratelimit.Rule
	opensrsInFlight  int // fleet-wide cap of calls in flight per credential; 0: none
	digicertInFlight int
	outageSpec       string // OUTAGE_THRESHOLD as given; parsed into outageThreshold
	outageThreshold  int    // 0: outage handling off
	outageWindow     time.Duration
	outageProbe      time.Duration
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

// secret is the one secret type (httpx.Secret): it never prints, whatever
// the verb, and it marshals as "[redacted]".
type secret = httpx.Secret

// configErrf returns a configuration error: one line, exit code 2.
func configErrf(format string, args ...any) error { return cli.Usagef(format, args...) }

// setting is one worker setting. The table below is the only place its
// names, default and help are written: loadConfig reads it, --help is
// printed from it, and readme_test.go checks the README's worker table
// against it.
type setting struct {
	env  string // "" for a flag-only setting
	flag string // "" for a secret: environment (or NAME_FILE) only
	// def is the default as it would be written in the environment.
	def  string
	help string
	// field points at where the value is stored: *string, *int, *bool,
	// *time.Duration or *secret, which also gives the syntax.
	field func(*config) any
	// check validates the parsed value; it returns what is wrong, and the
	// message is prefixed with the setting's names.
	check func(*config) string
	// offTable: documented with --demo, not in the README's settings table.
	offTable bool
}

// durationDefault writes d as the README does (1h, not 1h0m0s).
func durationDefault(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func atLeast(floor time.Duration, get func(*config) time.Duration, why string) func(*config) string {
	return func(c *config) string {
		if get(c) < floor {
			return "must be at least " + durationDefault(floor) + why
		}
		return ""
	}
}

var settings = []setting{
	{env: "REDIS_URL", flag: "redis-url", def: redisconn.DefaultURL, help: "Redis URL",
		field: func(c *config) any { return &c.redisURL },
		check: func(c *config) string {
			// The demo's embedded Redis replaces the URL unless one was given.
			if _, err := redisconn.Parse(c.redisURL); err != nil && (!c.demo || c.demoRedis) {
				return err.Error()
			}
			return ""
		}},
	{env: "WORKER_CONCURRENCY", flag: "concurrency", def: "20", help: "tasks of each provider processed at once, unless set per provider",
		field: func(c *config) any { return &c.concurrency },
		check: func(c *config) string {
			if c.concurrency < 1 {
				return fmt.Sprintf("must be at least 1, got %d", c.concurrency)
			}
			return ""
		}},
	{env: "OPENSRS_CONCURRENCY", flag: "opensrs-concurrency",
		help:  "OpenSRS tasks processed at once, apart from DigiCert's (default WORKER_CONCURRENCY)",
		field: func(c *config) any { return &c.opensrsConc },
		check: func(c *config) string { return providerConcurrency(c.opensrsConc) }},
	{env: "DIGICERT_CONCURRENCY", flag: "digicert-concurrency",
		help:  "DigiCert tasks processed at once, apart from OpenSRS's (default WORKER_CONCURRENCY)",
		field: func(c *config) any { return &c.digicertConc },
		check: func(c *config) string { return providerConcurrency(c.digicertConc) }},
	{env: "OPENSRS_USERNAME", flag: "opensrs-username", help: "OpenSRS reseller username",
		field: func(c *config) any { return &c.opensrsUsername }},
	{env: "OPENSRS_API_KEY", help: "OpenSRS API key, or a file holding it",
		field: func(c *config) any { return &c.opensrsKey }},
	{env: "OPENSRS_URL", flag: "opensrs-url", def: opensrs.LiveURL, help: "OpenSRS XCP base URL (test: " + opensrs.TestURL + ")",
		field: func(c *config) any { return &c.opensrsURL }},
	{env: "DIGICERT_API_KEY", help: "DigiCert CertCentral API key, or a file holding it",
		field: func(c *config) any { return &c.digicertKey }},
	{env: "DIGICERT_URL", flag: "digicert-url", def: digicert.USURL, help: "DigiCert Services API base URL (EU: " + digicert.EUURL + ")",
		field: func(c *config) any { return &c.digicertURL }},
	{env: "DIGICERT_RATE_LIMIT", flag: "digicert-rate-limit", def: ratelimit.DigiCertDefault,
		help:  "DigiCert requests allowed per API key across all workers, N/PERIOD[,N/PERIOD], or off",
		field: func(c *config) any { return &c.digicertRateSpec },
		check: func(c *config) string { return rules(c.digicertRateSpec, &c.digicertRate) }},
	{env: "OPENSRS_RATE_LIMIT", flag: "opensrs-rate-limit", def: "off",
		help:  "the same for OpenSRS (no limit is documented), e.g. 10/1s",
		field: func(c *config) any { return &c.opensrsRateSpec },
		check: func(c *config) string { return rules(c.opensrsRateSpec, &c.opensrsRate) }},
	{env: "OPENSRS_MAX_IN_FLIGHT", flag: "opensrs-max-in-flight", def: "2",
		help:  "OpenSRS calls in flight at once per reseller account across all workers (OpenSRS answers 310 past its cap); 0 disables",
		field: func(c *config) any { return &c.opensrsInFlight },
		check: func(c *config) string { return inFlightCap(c.opensrsInFlight) }},
	{env: "DIGICERT_MAX_IN_FLIGHT", flag: "digicert-max-in-flight", def: "0",
		help:  "the same for DigiCert, per API key; 0 disables",
		field: func(c *config) any { return &c.digicertInFlight },
		check: func(c *config) string { return inFlightCap(c.digicertInFlight) }},
	{env: "OUTAGE_THRESHOLD", flag: "outage-threshold", def: strconv.Itoa(outage.DefaultThreshold),
		help:  "transient provider failures (5xx, timeouts, connection failures) within OUTAGE_WINDOW, with no success between, that stop traffic to that provider across all workers; 0 or off disables",
		field: func(c *config) any { return &c.outageSpec },
		check: func(c *config) string {
			if s := strings.TrimSpace(c.outageSpec); strings.EqualFold(s, "off") {
				c.outageThreshold = 0
				return ""
			}
			n, err := strconv.Atoi(strings.TrimSpace(c.outageSpec))
			if err != nil || n < 0 {
				return fmt.Sprintf("must be a whole number of failures, 0 or off, got %q", c.outageSpec)
			}
			c.outageThreshold = n
			return ""
		}},
	{env: "OUTAGE_WINDOW", flag: "outage-window", def: durationDefault(outage.DefaultWindow), help: "how recent those failures must be",
		field: func(c *config) any { return &c.outageWindow },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.outageWindow }, "")},
	{env: "OUTAGE_PROBE_INTERVAL", flag: "outage-probe-interval", def: durationDefault(outage.DefaultProbeInterval),
		help:  "while a provider is held back, one call across all workers goes through this often as a probe; its success resumes traffic",
		field: func(c *config) any { return &c.outageProbe },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.outageProbe }, "")},
	{env: "PROVIDER_TIMEOUT", flag: "provider-timeout", def: "90s", help: "limit of one provider call, all included",
		field: func(c *config) any { return &c.providerTimeout },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.providerTimeout }, "")},
	{env: "RETRY_BASE", flag: "retry-base", def: durationDefault(tasks.DefaultRetryPolicy.Base), help: "first retry delay, doubling",
		field: func(c *config) any { return &c.retryBase },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.retryBase }, " (asynq schedules in whole seconds)")},
	{env: "RETRY_MAX", flag: "retry-max", def: durationDefault(tasks.DefaultRetryPolicy.Max), help: "longest retry delay",
		field: func(c *config) any { return &c.retryMax },
		check: func(c *config) string {
			if c.retryMax < c.retryBase {
				return "must be at least RETRY_BASE"
			}
			return ""
		}},
	{env: "RATE_LIMIT_WAIT", flag: "rate-limit-wait", def: durationDefault(tasks.DefaultRetryPolicy.RateLimitWait), help: "wait after a rate limit without a hint",
		field: func(c *config) any { return &c.rateLimitWait },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.rateLimitWait }, "")},
	{env: "HTTP_ADDR", flag: "http-addr", def: "127.0.0.1:8080", help: "/healthz /readyz /metrics /dashboard/ address, or off",
		field: func(c *config) any { return &c.httpAddr },
		check: func(c *config) string {
			if c.httpAddr == "off" {
				return ""
			}
			if err := checkListenAddr(c.httpAddr); err != nil {
				return err.Error() + " (host:port, or off)"
			}
			return ""
		}},
	{env: "SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: "25s",
		help:  "wait for in-flight tasks on SIGTERM before requeueing them (then up to 10s more while the interrupted attempts are recorded)",
		field: func(c *config) any { return &c.shutdownTimeout },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.shutdownTimeout }, "")},
	{env: "RECONCILE_INTERVAL", flag: "reconcile-interval", def: "1m", help: "how often asynq's archive is swept into dead letters",
		field: func(c *config) any { return &c.reconcileEvery },
		check: atLeast(time.Second, func(c *config) time.Duration { return c.reconcileEvery }, "")},
	{env: "OUTCOME_RETENTION", flag: "outcome-retention", def: durationDefault(outcome.DefaultRetention), help: "how long attempt histories and success marks are kept, at least 1h",
		field: func(c *config) any { return &c.retention },
		check: func(c *config) string {
			if c.retention < minRetention {
				return fmt.Sprintf("must be at least %s (success marks must outlive asynq's crash recovery, or a redelivered task is resent), got %s", minRetention, c.retention)
			}
			return ""
		}},
	{env: "DEADLETTER_RETENTION", flag: "deadletter-retention", def: durationDefault(deadletter.DefaultRetention),
		help:  "how long a dead letter is kept unless replayed or deleted (at least 24h; 0 keeps forever)",
		field: func(c *config) any { return &c.deadRetention },
		check: func(c *config) string {
			if c.deadRetention != 0 && c.deadRetention < deadletter.MinRetention {
				return fmt.Sprintf("must be 0 (keep forever) or at least %s, got %s", deadletter.MinRetention, c.deadRetention)
			}
			return ""
		}},
	{env: "DASHBOARD_USER", flag: "dashboard-user", help: "dashboard basic-auth user (the dashboard is off without user and password)",
		field: func(c *config) any { return &c.dashboardUser },
		check: func(c *config) string {
			if strings.Contains(c.dashboardUser, ":") {
				return "must not contain ':' (basic auth)"
			}
			return ""
		}},
	{env: "DASHBOARD_PASSWORD", help: "dashboard basic-auth password, or a file holding it",
		field: func(c *config) any { return &c.dashboardPass }},
	{env: "DASHBOARD_READONLY", flag: "dashboard-readonly", def: "false", help: "true mounts the dashboard read-only",
		field: func(c *config) any { return &c.dashboardRO }},
	{flag: "dashboard-no-auth", def: "false", help: "serve the dashboard WITHOUT authentication (loopback demos only)",
		field: func(c *config) any { return &c.dashboardNoAuth }},
	{env: "LOG_LEVEL", flag: "log-level", def: "info", help: "debug, info, warn or error",
		field: func(c *config) any { return &c.logLevel },
		check: func(c *config) string {
			switch strings.ToLower(c.logLevel) {
			case "debug", "info", "warn", "error":
				return ""
			}
			return fmt.Sprintf("must be debug, info, warn or error, got %q", c.logLevel)
		}},
	{flag: "demo", def: "false", help: "run everything in one process: embedded Redis, provider simulators, sample tasks",
		field: func(c *config) any { return &c.demo }, offTable: true},
	{flag: "demo-samples", def: "true", help: "with --demo: enqueue the sample tasks",
		field: func(c *config) any { return &c.demoTasks }, offTable: true},
}

func rules(spec string, into *[]ratelimit.Rule) string {
	var err error
	if *into, err = ratelimit.ParseRules(spec); err != nil {
		return err.Error()
	}
	return ""
}

// providerConcurrency checks OPENSRS_CONCURRENCY or DIGICERT_CONCURRENCY;
// 0 (unset) stands for WORKER_CONCURRENCY.
func providerConcurrency(n int) string {
	if n < 0 {
		return fmt.Sprintf("must be at least 1 (or unset: WORKER_CONCURRENCY), got %d", n)
	}
	return ""
}

// concurrencyOf is how many tasks of provider p the worker processes at
// once. Each provider has its own share, so that tasks of one waiting for
// its rate limit or in-flight cap never hold the other's.
func (c *config) concurrencyOf(p providers.Name) int {
	n := c.concurrency
	switch p {
	case providers.OpenSRS:
		n = cmp.Or(c.opensrsConc, n)
	case providers.DigiCert:
		n = cmp.Or(c.digicertConc, n)
	}
	return n
}

func inFlightCap(n int) string {
	if n < 0 {
		return fmt.Sprintf("must be 0 (no cap) or more, got %d", n)
	}
	return ""
}

// name is how messages name the setting: "ENV (--flag)", "ENV" or "--flag".
func (s setting) name() string {
	switch {
	case s.env == "":
		return "--" + s.flag
	case s.flag == "":
		return s.env
	}
	return s.env + " (--" + s.flag + ")"
}

// envName is the variable as --help lists it.
func (s setting) envName() string {
	if _, ok := s.field(&config{}).(*secret); ok {
		return s.env + "[_FILE]"
	}
	return s.env
}

// register reads the setting's environment variable (which becomes the
// flag's default) and defines its flag. A malformed variable is returned
// as the setting's error; the default stands in so parsing can go on.
func (s setting) register(fs *flag.FlagSet, c *config, getenv func(string) string) error {
	v, fromEnv := s.def, false
	if s.env != "" {
		if e := getenv(s.env); e != "" {
			v, fromEnv = e, true
		}
	}
	usage := s.help
	if s.env != "" {
		usage += " (env " + s.env + ")"
	}
	var err error
	switch p := s.field(c).(type) {
	case *secret:
		*p, err = secretEnv(s.env, getenv)
		return err
	case *string:
		fs.StringVar(p, s.flag, v, usage)
	case *int:
		n, perr := strconv.Atoi(v)
		if perr != nil && fromEnv {
			err, n = configErrf("%s: must be a whole number, got %q", s.env, v), mustInt(s.def)
		}
		fs.IntVar(p, s.flag, n, usage)
	case *bool:
		b, perr := strconv.ParseBool(v)
		if perr != nil && fromEnv {
			err = configErrf("%s: must be true or false, got %q", s.env, v)
		}
		fs.BoolVar(p, s.flag, b, usage)
	case *time.Duration:
		d, perr := time.ParseDuration(v)
		if (perr != nil || d < 0) && fromEnv {
			err, d = configErrf("%s: must be a duration like 30s or 1h, got %q", s.env, v), mustDuration(s.def)
		}
		fs.DurationVar(p, s.flag, d, usage)
	default:
		panic(fmt.Sprintf("setting %s: field of type %T", s.name(), p))
	}
	return err
}

func mustInt(s string) int {
	if s == "" { // no default: the zero value stands for another setting's
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
}

// secretEnv reads NAME, or the file named by NAME_FILE.
func secretEnv(name string, getenv func(string) string) (secret, error) {
	v, f := getenv(name), getenv(name+"_FILE")
	switch {
	case v != "" && f != "":
		return "", configErrf("%s and %s_FILE: set only one", name, name)
	case f != "":
		b, err := os.ReadFile(f)
		if err != nil {
			return "", configErrf("%s_FILE: cannot read %s: %v", name, f, errors.Unwrap(err))
		}
		return secret(strings.TrimSpace(string(b))), nil
	}
	return secret(v), nil
}

const usageHead = `Usage: worker [flags]
       worker --demo
       worker healthcheck [URL]

Consumes certmail resend tasks (queues opensrs and digicert) and calls the providers.
A provider without credentials is not consumed: its tasks wait in Redis.

Environment (flags override):
`

// usage is the text --help prints before the flags.
func usage() string {
	var b strings.Builder
	b.WriteString(usageHead)
	for _, s := range settings {
		if s.env == "" {
			continue
		}
		line := s.help
		if s.def != "" {
			line += " (default " + s.def + ")"
		}
		fmt.Fprintf(&b, "  %-28s %s\n", s.envName(), line)
	}
	b.WriteString("\nFlags:\n")
	return b.String()
}

func loadConfig(args []string, stdout io.Writer, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := cli.NewFlagSet("worker", usage())
	var errs []error
	for _, s := range settings {
		if err := s.register(fs, c, getenv); err != nil {
			errs = append(errs, err)
		}
	}
	rest, err := cli.Parse(fs, args, stdout)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, configErrf("unexpected argument %q (see worker --help)", rest[0])
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

// validate checks each setting, then the rules that tie several together.
func (c *config) validate() error {
	for _, s := range settings {
		if s.check == nil {
			continue
		}
		if msg := s.check(c); msg != "" {
			return configErrf("%s: %s", s.name(), msg)
		}
	}
	switch {
	case (c.dashboardUser == "") != (c.dashboardPass == ""):
		return configErrf("DASHBOARD_USER and DASHBOARD_PASSWORD: set both or neither")
	case c.dashboardNoAuth && c.dashboardUser != "":
		return configErrf("--dashboard-no-auth: not with DASHBOARD_USER and DASHBOARD_PASSWORD; choose one")
	case c.opensrsUsername != "" && c.opensrsKey == "":
		return configErrf("OPENSRS_API_KEY (or OPENSRS_API_KEY_FILE): required when OPENSRS_USERNAME is set")
	case c.opensrsKey != "" && c.opensrsUsername == "":
		return configErrf("OPENSRS_USERNAME (--opensrs-username): required when OPENSRS_API_KEY is set")
	case c.demo: // the demo brings its own credentials and points the clients at its simulators
		return nil
	case c.opensrsKey == "" && c.digicertKey == "":
		return configErrf("no provider configured: set OPENSRS_USERNAME and OPENSRS_API_KEY (or OPENSRS_API_KEY_FILE), and/or DIGICERT_API_KEY (or DIGICERT_API_KEY_FILE); or run worker --demo")
	}
	_, err := buildClients(c, nil)
	return err
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
