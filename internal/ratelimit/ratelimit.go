// Package ratelimit keeps certmail under a provider's request limits across
// every worker process, before the provider has to say no.
//
// DigiCert allows 100 requests per 5 s and 1,000 per 3 min per API key,
// rolling; past either, every request gets 429 for "a while". Bouncing off
// 429s works (the handler sends the task back without spending its budget)
// but keeps the account at the limit. So each provider client can be wrapped
// in a Resender that first asks a GCRA limiter in Redis
// (github.com/go-redis/redis_rate: atomic, shared by all workers) for a slot
// under every configured rule. A short wait is taken in place; a longer one
// comes back as a rate-limited error that never reached the provider.
//
// Limiter keys hold a hash of the API key, never the key itself; the rdb
// package names them (under its key prefix, like every certmail key) and runs
// the limiter.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/rdb"
)

// Rule allows N requests per Per, with bursts of up to N.
type Rule struct {
	N   int
	Per time.Duration
}

func (r Rule) String() string { return fmt.Sprintf("%d/%s", r.N, r.Per) }

// DigiCertDefault is DigiCert's documented limit (docs/digicert.md §5).
const DigiCertDefault = "100/5s,1000/3m"

// ParseRules parses "N/DURATION[,N/DURATION…]", e.g. "100/5s,1000/3m".
// Empty, "0" and "off" mean no limit.
func ParseRules(s string) ([]Rule, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" || strings.EqualFold(s, "off") {
		return nil, nil
	}
	var rules []Rule
	for _, part := range strings.Split(s, ",") {
		n, per, ok := strings.Cut(strings.TrimSpace(part), "/")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count < 1 {
			return nil, fmt.Errorf("%q: want N/DURATION like 100/5s", part)
		}
		d, err := time.ParseDuration(per)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("%q: want a period of at least 1s, like 5s or 3m", part)
		}
		rules = append(rules, Rule{N: count, Per: d})
	}
	return rules, nil
}

// Resender is a providers.Resender that waits for a slot before each call.
type Resender struct {
	next     providers.Resender
	limiter  *rdb.Limiter
	provider providers.Name
	credHash string // of the credential, never the credential
	rules    []Rule
	maxWait  time.Duration
}

// Wrap returns next limited by rules, shared by every worker using the same
// credential (identified by its hash). With no rules it returns next.
// Waits up to maxWait are taken in place; longer ones return an *Error.
func Wrap(next providers.Resender, c redis.UniversalClient, provider providers.Name, credential string, rules []Rule, maxWait time.Duration) providers.Resender {
	if len(rules) == 0 {
		return next
	}
	sum := sha256.Sum256([]byte(credential))
	return &Resender{
		next: next, limiter: rdb.New(c).NewLimiter(), provider: provider, rules: rules, maxWait: maxWait,
		credHash: hex.EncodeToString(sum[:8]),
	}
}

// Resend implements providers.Resender.
func (r *Resender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	for {
		wait, rule, err := r.reserve(ctx)
		if err != nil {
			return providers.Result{}, &Error{Provider: r.provider, Class: providers.Transient, Err: err}
		}
		if wait == 0 {
			return r.next.Resend(ctx, req)
		}
		if wait > r.maxWait {
			return providers.Result{}, &Error{Provider: r.provider, Class: providers.RateLimited, Rule: rule, RetryAfter: wait}
		}
		select {
		case <-ctx.Done():
			return providers.Result{}, &Error{Provider: r.provider, Class: providers.Transient, Rule: rule, Err: ctx.Err()}
		case <-time.After(wait):
		}
	}
}

// reserve asks every rule for a slot and returns the longest wait (0 when
// all allowed) and the rule that imposed it.
func (r *Resender) reserve(ctx context.Context) (time.Duration, Rule, error) {
	var wait time.Duration
	var worst Rule
	for i, rule := range r.rules {
		res, err := r.limiter.Allow(ctx, string(r.provider), r.credHash, i, redis_rate.Limit{Rate: rule.N, Burst: rule.N, Period: rule.Per})
		if err != nil {
			return 0, rule, fmt.Errorf("rate limiter: %w", err)
		}
		if res.Allowed == 0 && res.RetryAfter > wait {
			wait, worst = res.RetryAfter, rule
		}
	}
	return wait, worst, nil
}

// Error is a call that the limiter held back: it never reached the provider.
type Error struct {
	Provider   providers.Name
	Class      providers.Class
	Rule       Rule
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: request not sent: %v (%s)", e.Provider, e.Err, e.Class)
	}
	return fmt.Sprintf("%s: request not sent: our rate limit %s reached, next slot in %s (%s)",
		e.Provider, e.Rule, e.RetryAfter.Round(time.Millisecond), e.Class)
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Detail implements providers.DetailedError.
func (e *Error) Detail() providers.Detail {
	msg := "local rate limit " + e.Rule.String()
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return providers.Detail{Provider: e.Provider, Class: e.Class, Code: "local_rate_limit", Message: msg, RetryAfter: e.RetryAfter, NotSent: true}
}

var _ providers.Resender = (*Resender)(nil)
