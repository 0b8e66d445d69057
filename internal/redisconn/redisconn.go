// Package redisconn turns the REDIS_URL every certmail binary accepts into a
// connected go-redis client and into asynq's connection option, and keeps
// every password out of every message.
//
// Three deployments, one URL each:
//
//	redis://[[user]:password@]host:port[/db]      one server (rediss:// for TLS, unix:// for a socket)
//	redis-sentinel://[[user]:password@]h1:p1[,h2:p2,…][/db]?master=NAME[&sentinel_password=…]
//	redis-cluster://[[user]:password@]h1:p1[,h2:p2,…]
//
// redis:// keeps go-redis's own parser (redis.ParseURL), options and
// defaults. The sentinel and cluster forms are parsed here, not by
// asynq.ParseRedisURI, which drops the database of a sentinel URL in asynq
// v0.26.0 (docs/asynq.md §15).
package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// DefaultURL is used when neither --redis-url nor REDIS_URL is set.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Kind is the deployment a URL names.
type Kind string

// The deployments.
const (
	Single   Kind = "single"   // redis://, rediss://, unix://
	Sentinel Kind = "sentinel" // redis-sentinel://, rediss-sentinel://
	Cluster  Kind = "cluster"  // redis-cluster://, rediss-cluster://
)

// Conn is a parsed Redis URL. Exactly one of Single, Failover and
// ClusterOpts is set, according to Kind.
type Conn struct {
	Kind        Kind
	Single      *redis.Options
	Failover    *redis.FailoverOptions
	ClusterOpts *redis.ClusterOptions
}

const usageLine = "must be a URL like redis://[user:password@]host:6379/0, rediss://…, " +
	"redis-sentinel://[user:password@]host:26379[,host:port…][/db]?master=NAME or redis-cluster://host:port[,host:port…]"

// Parse validates a Redis URL of any supported form. The error is one line,
// names the part that is wrong and never contains a password.
func Parse(raw string) (*Conn, error) {
	scheme, _, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New(usageLine)
	}
	var c *Conn
	var err error
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		c, err = parseSingle(raw)
	case "redis-sentinel", "rediss-sentinel":
		c, err = parseMulti(raw, Sentinel)
	case "redis-cluster", "rediss-cluster":
		c, err = parseMulti(raw, Cluster)
	default:
		err = fmt.Errorf("%s (scheme %s is not one of redis, rediss, unix, redis-sentinel, rediss-sentinel, redis-cluster, rediss-cluster)", usageLine, quoteName(strings.ToLower(scheme)))
	}
	if err != nil {
		return nil, errors.New(scrub(err.Error(), raw))
	}
	return c, nil
}

// parseSingle is the redis:// path, go-redis's parser as it has always been.
func parseSingle(raw string) (*Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse errors quote the URL: say which part is wrong instead.
		if _, err2 := split(raw); err2 != nil {
			return nil, err2
		}
		return nil, errors.New(usageLine)
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		// Shown without its query: a rejected option may be a password
		// (other clients accept ?password=); go-redis names the option.
		shown := *u
		shown.RawQuery, shown.ForceQuery = "", false
		return nil, fmt.Errorf("invalid URL %s: %s", shown.Redacted(), err)
	}
	return &Conn{Kind: Single, Single: opt}, nil
}

// parts is a URL cut by hand: the sentinel and cluster forms hold several
// host:port pairs, which net/url does not allow.
type parts struct {
	scheme, user, password string
	hasPassword            bool
	hosts                  []string
	path                   string
	query                  []param
}

type param struct{ key, value string }

// split cuts scheme://[userinfo@]hosts[/path][?query]. Errors name the part
// and quote nothing that could be a password.
func split(raw string) (*parts, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || scheme == "" {
		return nil, errors.New(usageLine)
	}
	p := &parts{scheme: strings.ToLower(scheme)}
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		return nil, errors.New("fragment: a Redis URL has no #fragment (percent-encode # in a password as %23)")
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		info := authority[:i]
		authority = authority[i+1:]
		user, pass, has := strings.Cut(info, ":")
		var err error
		if p.user, err = url.PathUnescape(user); err != nil {
			return nil, errors.New("user: invalid %-escape")
		}
		if p.password, err = url.PathUnescape(pass); err != nil {
			return nil, errors.New("password: invalid %-escape")
		}
		p.hasPassword = has
	} else if strings.Contains(tail, "@") {
		return nil, errors.New("password: percent-encode / and ? in a password (%2F, %3F)")
	}
	if authority == "" {
		return nil, errors.New("host list: no host:port given")
	}
	for i, h := range strings.Split(authority, ",") {
		host, port, err := net.SplitHostPort(h)
		switch {
		case err != nil:
			return nil, fmt.Errorf("host list: address %d is not host:port", i+1)
		case host == "":
			return nil, fmt.Errorf("host list: address %d has no host", i+1)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port: address %d has an invalid port (want 1-65535)", i+1)
		}
		p.hosts = append(p.hosts, h)
	}
	path, query, _ := strings.Cut(tail, "?")
	p.path = path
	if query == "" {
		return p, nil
	}
	for i, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("query parameter %d: invalid %%-escape", i+1)
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("query parameter %s: invalid %%-escape", quoteName(key))
		}
		p.query = append(p.query, param{key, val})
	}
	return p, nil
}

// quoteName quotes a query parameter name if it looks like one, so that a
// stray piece of password is never echoed.
func quoteName(k string) string {
	if k == "" || len(k) > 32 || strings.TrimLeft(k, "abcdefghijklmnopqrstuvwxyz_-") != "" {
		return "(unnamed)"
	}
	return strconv.Quote(k)
}

// parseMulti builds the sentinel or cluster options.
func parseMulti(raw string, kind Kind) (*Conn, error) {
	p, err := split(raw)
	if err != nil {
		return nil, err
	}
	db := 0
	if s := strings.TrimPrefix(p.path, "/"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, errors.New("db: the path must be a database number like /0")
		}
		db = n
	}
	if kind == Cluster && db != 0 {
		return nil, errors.New("db: Redis Cluster has only database 0")
	}
	var master, sentinelUser, sentinelPass string
	var dial, read, write time.Duration
	var pool int
	seen := map[string]bool{}
	for _, q := range p.query {
		if seen[q.key] {
			return nil, fmt.Errorf("query parameter %s: given twice", quoteName(q.key))
		}
		seen[q.key] = true
		switch {
		case kind == Sentinel && q.key == "master":
			master = q.value
		case kind == Sentinel && q.key == "sentinel_password":
			sentinelPass = q.value
		case kind == Sentinel && q.key == "sentinel_username":
			sentinelUser = q.value
		case q.key == "dial_timeout" || q.key == "read_timeout" || q.key == "write_timeout":
			d, err := duration(q.value)
			if err != nil {
				return nil, fmt.Errorf("query parameter %s: %v", quoteName(q.key), err)
			}
			switch q.key {
			case "dial_timeout":
				dial = d
			case "read_timeout":
				read = d
			default:
				write = d
			}
		case q.key == "pool_size":
			n, err := strconv.Atoi(q.value)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("query parameter %s: want a positive number", quoteName(q.key))
			}
			pool = n
		default:
			allowed := "dial_timeout, read_timeout, write_timeout, pool_size"
			if kind == Sentinel {
				allowed = "master, sentinel_username, sentinel_password, " + allowed
			}
			return nil, fmt.Errorf("query parameter %s: not supported in a %s URL (supported: %s)", quoteName(q.key), p.scheme, allowed)
		}
	}
	var tlsConf *tls.Config
	if strings.HasPrefix(p.scheme, "rediss") {
		// ServerName stays empty: crypto/tls takes it from each address dialled.
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if kind == Cluster {
		return &Conn{Kind: Cluster, ClusterOpts: &redis.ClusterOptions{
			Addrs: p.hosts, Username: p.user, Password: p.password,
			DialTimeout: dial, ReadTimeout: read, WriteTimeout: write, PoolSize: pool, TLSConfig: tlsConf,
		}}, nil
	}
	if master == "" {
		return nil, errors.New("master: a redis-sentinel URL needs ?master=NAME (the name the Sentinels monitor)")
	}
	return &Conn{Kind: Sentinel, Failover: &redis.FailoverOptions{
		MasterName: master, SentinelAddrs: p.hosts, SentinelUsername: sentinelUser, SentinelPassword: sentinelPass,
		Username: p.user, Password: p.password, DB: db,
		DialTimeout: dial, ReadTimeout: read, WriteTimeout: write, PoolSize: pool, TLSConfig: tlsConf,
	}}, nil
}

// duration reads a timeout as go-redis's URL options do: a Go duration or
// a number of seconds.
func duration(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration like 5s or a number of seconds")
	}
	return d, nil
}

// scrub replaces anything in msg that may be a password from raw with
// "xxxxx": the user-info password and sentinel_password, raw and decoded.
// The parsers quote no such part; this is the second lock.
func scrub(msg, raw string) string {
	var secrets []string
	_, rest, _ := strings.Cut(raw, "://")
	for i := strings.IndexByte(rest, '@'); i >= 0; {
		info := rest[:i]
		if _, pass, ok := strings.Cut(info, ":"); ok {
			secrets = append(secrets, pass)
			if d, err := url.PathUnescape(pass); err == nil {
				secrets = append(secrets, d)
			}
		}
		j := strings.IndexByte(rest[i+1:], '@')
		if j < 0 {
			break
		}
		i += j + 1
	}
	if _, q, ok := strings.Cut(raw, "?"); ok {
		for _, kv := range strings.Split(q, "&") {
			if k, v, ok := strings.Cut(kv, "="); ok && strings.Contains(strings.ToLower(k), "password") {
				secrets = append(secrets, v)
				if d, err := url.QueryUnescape(v); err == nil {
					secrets = append(secrets, d)
				}
			}
		}
	}
	for _, s := range secrets {
		if len(s) >= 3 {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}

// Redact returns the URL with its password, and a sentinel_password, replaced
// by "xxxxx".
func Redact(raw string) string {
	scheme, _, _ := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		u, err := url.Parse(raw)
		if err != nil {
			return "(unparseable URL)"
		}
		return u.Redacted()
	}
	p, err := split(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	var b strings.Builder
	b.WriteString(p.scheme + "://")
	if p.user != "" || p.hasPassword {
		b.WriteString(url.PathEscape(p.user))
		if p.hasPassword {
			b.WriteString(":xxxxx")
		}
		b.WriteString("@")
	}
	b.WriteString(strings.Join(p.hosts, ","))
	b.WriteString(p.path)
	for i, q := range p.query {
		b.WriteString(map[bool]string{true: "?", false: "&"}[i == 0])
		v := url.QueryEscape(q.value)
		if strings.Contains(q.key, "password") {
			v = "xxxxx"
		}
		b.WriteString(url.QueryEscape(q.key) + "=" + v)
	}
	return b.String()
}

// NewClient returns a go-redis client for the deployment: a plain client,
// a failover client that follows the Sentinels' primary, or a cluster
// client. Nothing is dialled yet.
func (c *Conn) NewClient() redis.UniversalClient {
	switch c.Kind {
	case Sentinel:
		return redis.NewFailoverClient(c.Failover)
	case Cluster:
		return redis.NewClusterClient(c.ClusterOpts)
	default:
		return redis.NewClient(c.Single)
	}
}

// Where describes the servers for messages, without any password.
func (c *Conn) Where() string {
	switch c.Kind {
	case Sentinel:
		return fmt.Sprintf("master %q via sentinels %s", c.Failover.MasterName, strings.Join(c.Failover.SentinelAddrs, ","))
	case Cluster:
		return "cluster nodes " + strings.Join(c.ClusterOpts.Addrs, ",")
	default:
		return c.Single.Addr
	}
}

// Connect parses raw, connects and pings within timeout. The error names the
// servers and says what to check, without the password.
func Connect(ctx context.Context, raw string, timeout time.Duration) (redis.UniversalClient, error) {
	c, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	return c.connect(ctx, raw, timeout)
}

// connect builds c's client and pings it within timeout.
func (c *Conn) connect(ctx context.Context, raw string, timeout time.Duration) (redis.UniversalClient, error) {
	rdb := c.NewClient()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("redis unreachable at %s: %s (check --redis-url or REDIS_URL)", c.Where(), scrub(err.Error(), raw))
	}
	return rdb, nil
}

// SetLogger routes go-redis's internal log lines (pool dial failures, the
// Sentinel's "new master" notices and the like) to l at warning level, or
// discards them when l is nil: the CLIs say what went wrong in one line of
// their own.
func SetLogger(l *slog.Logger) { redis.SetLogger(printfLogger{l}) }

type printfLogger struct{ l *slog.Logger }

func (p printfLogger) Printf(ctx context.Context, format string, v ...any) {
	if p.l != nil {
		p.l.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
	}
}

// asynqOpt is Conn's option for asynq and asynqmon.
func (c *Conn) asynqOpt() asynq.RedisConnOpt {
	switch c.Kind {
	case Sentinel:
		o := c.Failover
		return asynq.RedisFailoverClientOpt{
			MasterName: o.MasterName, SentinelAddrs: o.SentinelAddrs,
			SentinelUsername: o.SentinelUsername, SentinelPassword: o.SentinelPassword,
			Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			PoolSize: o.PoolSize, TLSConfig: o.TLSConfig,
		}
	case Cluster:
		o := c.ClusterOpts
		return asynq.RedisClusterClientOpt{
			Addrs: o.Addrs, Username: o.Username, Password: o.Password,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			TLSConfig: o.TLSConfig,
		}
	default:
		o := c.Single
		return asynq.RedisClientOpt{
			Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			PoolSize: o.PoolSize, TLSConfig: o.TLSConfig,
		}
	}
}
