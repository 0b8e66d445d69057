// Package redisconn turns the REDIS_URL every certmail binary accepts into a
// connected go-redis client, and keeps the password out of every message.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultURL is used when neither --redis-url nor REDIS_URL is set.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Parse validates a redis:// or rediss:// URL. The error never contains the
// password.
func Parse(raw string) (*redis.Options, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		return nil, errors.New("must be a URL like redis://[user:password@]host:6379/0 or rediss://…")
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		// Shown without its query: a rejected option may be a password
		// (other clients accept ?password=); go-redis names the option.
		shown := *u
		shown.RawQuery, shown.ForceQuery = "", false
		return nil, fmt.Errorf("invalid URL %s: %s", shown.Redacted(), redactErr(err, u))
	}
	return opt, nil
}

func redactErr(err error, u *url.URL) string {
	s := err.Error()
	if p, ok := u.User.Password(); ok && p != "" {
		s = strings.ReplaceAll(s, p, "xxxxx")
	}
	return s
}

// Redact returns the URL with its password replaced by "xxxxx".
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// Connect parses raw, connects and pings within timeout. The error names the
// address and says what to check, without the password.
func Connect(ctx context.Context, raw string, timeout time.Duration) (*redis.Client, error) {
	opt, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(opt)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis unreachable at %s: %v (check --redis-url or REDIS_URL)", opt.Addr, err)
	}
	return c, nil
}

// SetLogger routes go-redis's internal log lines (pool dial failures and the
// like) to l at warning level, or discards them when l is nil: the CLIs say
// what went wrong in one line of their own.
func SetLogger(l *slog.Logger) { redis.SetLogger(printfLogger{l}) }

type printfLogger struct{ l *slog.Logger }

func (p printfLogger) Printf(ctx context.Context, format string, v ...any) {
	if p.l != nil {
		p.l.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
	}
}
