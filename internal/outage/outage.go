// Package outage stops sending a provider traffic while it is down, across
// every worker process, without spending the waiting tasks' retry budgets.
//
// A provider client is wrapped in a Resender that keeps a circuit per
// provider credential in Redis (rdb.OutageAdmit, rdb.OutageReport). When
// Threshold transient failures (providers.Transient: 5xx, timeouts,
// connection failures; never rate limits, permanent or configuration
// errors, nor calls held back by the local limiter or in-flight cap) come
// within Window with no success in between, the circuit opens for the
// whole fleet. While it is open a call is not sent: it returns an *Error of
// class providers.RateLimited (provider code "provider_outage"), so the
// task goes back to the queue for about a probe interval, budget untouched.
// Once per ProbeInterval, across the fleet, one call goes through as the
// probe (a lease in the circuit's hash decides who). Any answer of the
// provider other than a transient failure closes the circuit; a failure
// keeps it open for another interval. A success of a call sent before the
// circuit opened closes it too: the provider answered.
//
// A transient failure that comes back while the circuit is open (calls sent
// before it opened, the failure that opened it, a failed probe) is also
// returned as a provider_outage rate limit: the outage, not the task, made
// it fail, so it does not spend the task's budget either. The failures
// before the circuit opened are charged as usual.
//
// The last attempt: asynq archives a task with no retry left whatever it
// returns, a rate limit included (docs/asynq.md §4). So a call on its
// task's last attempt (providers.WithLastAttempt) that finds the circuit open
// waits in place, trying again to be admitted (as the probe, or once the
// circuit closed), until it is or the attempt's time runs short; if it was
// the probe and failed, or failed as the circuit opened, it waits for the
// next probe the same way (the queue would have retried it too).
//
// Each transition (opened, probe started, probe failed, closed) is
// performed by one script run in one worker, which logs it: one log line
// per transition for the whole fleet.
package outage

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/inflight"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/ratelimit"
	"github.com/certmail/certmail/internal/rdb"
)

// Code is the provider code recorded for a call held back by an open
// circuit.
const Code = "provider_outage"

// Defaults of the worker's settings.
const (
	DefaultThreshold     = 10
	DefaultWindow        = 30 * time.Second
	DefaultProbeInterval = 20 * time.Second
)

// reportTimeout bounds the report after a call, on a context detached from
// the call's (a timed-out call is precisely what must be counted).
const reportTimeout = 2 * time.Second

// Config is one provider credential's circuit.
type Config struct {
	Provider providers.Name
	// Credential identifies the account; only its hash reaches Redis.
	Credential string
	// Threshold transient failures within Window open the circuit; 0 turns
	// outage handling off.
	Threshold int
	Window    time.Duration
	// ProbeInterval is how often one call is let through while open.
	ProbeInterval time.Duration
	// Logger receives the transitions this worker performs.
	Logger *slog.Logger
}

// Resender is a providers.Resender behind a fleet-wide outage circuit.
type Resender struct {
	next     providers.Resender
	rdb      *rdb.Client
	cfg      Config
	credHash string
	limits   rdb.OutageLimits
	// open is the circuit's state as this worker last saw it.
	open atomic.Bool
}

// Wrap returns next behind the circuit of cfg's credential, shared by every
// worker through c. With Threshold 0 it returns next.
func Wrap(next providers.Resender, c redis.UniversalClient, cfg Config) providers.Resender {
	if cfg.Threshold <= 0 {
		return next
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Resender{next: next, rdb: rdb.New(c), cfg: cfg, credHash: rdb.CredentialHash(cfg.Credential),
		limits: rdb.OutageLimits{Threshold: cfg.Threshold, Window: cfg.Window, ProbeEvery: cfg.ProbeInterval,
			TTL: max(time.Hour, 10*cfg.ProbeInterval)}}
}

// Open reports whether the circuit was open when this worker last looked
// (for metrics; no Redis call).
func (r *Resender) Open() bool { return r.open.Load() }

// Unwrap returns the client behind the circuit.
func (r *Resender) Unwrap() providers.Resender { return r.next }

// Resend implements providers.Resender.
func (r *Resender) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	giveUp, last := providers.LastAttemptUntil(ctx)
	for {
		token := newToken()
		adm, err := r.admit(ctx, token, last, giveUp)
		if err != nil {
			return providers.Result{}, err
		}
		res, err := r.next.Resend(ctx, req)
		err = r.report(ctx, adm, token, err)
		// On the last attempt a failure the outage explains (this call was
		// the probe, or went out just before the circuit opened) would
		// archive the task: wait for the next probe instead, as the queue
		// would have retried it.
		var oe *Error
		if !last || !errors.As(err, &oe) || oe.Err == nil || ctx.Err() != nil || !time.Now().Before(giveUp) {
			return res, err
		}
	}
}

// admit asks Redis whether the call may go. Redis trouble lets it go: the
// circuit protects the provider account, it must not stop the work.
func (r *Resender) admit(ctx context.Context, token string, last bool, giveUp time.Time) (admission, error) {
	for {
		a, err := r.rdb.OutageAdmit(ctx, string(r.cfg.Provider), r.credHash, token, r.cfg.ProbeInterval)
		if err != nil {
			return admission{unknown: true}, nil
		}
		r.open.Store(!a.Admitted || a.Probe)
		if a.Admitted {
			if a.Probe {
				r.cfg.Logger.Info("provider outage: circuit half-open, sending one probe", "provider", string(r.cfg.Provider))
			}
			return admission{OutageAdmission: a}, nil
		}
		refused := &Error{Provider: r.cfg.Provider, RetryAfter: r.requeue(a.Wait)}
		if !last {
			return admission{}, refused
		}
		// Poll often enough to catch a probe's success soon: the probe lease
		// may be taken by another worker just before it closes the circuit.
		wait := min(a.Wait, pollMax) + rand.N(pollJitter)
		if time.Now().Add(wait).After(giveUp) {
			return admission{}, refused
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return admission{}, refused
		case <-t.C:
		}
	}
}

// Poll bounds of a last attempt's wait for the circuit.
const (
	pollMax    = time.Second
	pollJitter = 50 * time.Millisecond
)

type admission struct {
	rdb.OutageAdmission
	unknown bool // Redis did not answer
}

// report tells Redis how the call ended, logs the transition this worker
// performed, and turns a transient failure into an outage requeue when the
// circuit is open.
func (r *Resender) report(ctx context.Context, adm admission, token string, err error) error {
	res := r.result(ctx, adm, err)
	probeToken := ""
	if adm.Probe {
		probeToken = token
	}
	switch {
	case adm.unknown:
		return err
	case res == rdb.OutageOK && !adm.Probe && adm.Failures == 0 && !r.open.Load():
		return err // nothing to reset: no Redis call on the common path
	case res == rdb.OutageNeutral && !adm.Probe:
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
	defer cancel()
	st, rerr := r.rdb.OutageReport(rctx, string(r.cfg.Provider), r.credHash, res, probeToken, r.limits, token)
	if rerr != nil {
		return err
	}
	r.open.Store(st.Open())
	p := string(r.cfg.Provider)
	switch st.Transition {
	case rdb.OutageOpened:
		r.cfg.Logger.Error("provider outage: circuit opened, calls held back; one probe per interval",
			"provider", p, "failures", r.cfg.Threshold, "window", r.cfg.Window.String(), "probe_interval", r.cfg.ProbeInterval.String(),
			"error", providers.Describe(err).Message)
	case rdb.OutageProbeFailed:
		r.cfg.Logger.Warn("provider outage: probe failed, circuit stays open",
			"provider", p, "open_for", st.OpenFor.Round(time.Second).String(), "next_probe_in", st.UntilProbe.String(),
			"error", providers.Describe(err).Message)
	case rdb.OutageClosed:
		r.cfg.Logger.Info("provider outage: circuit closed, provider answering again",
			"provider", p, "open_for", st.OpenFor.Round(time.Second).String(), "probe", adm.Probe)
	}
	if res == rdb.OutageFail && st.Open() {
		return &Error{Provider: r.cfg.Provider, RetryAfter: r.requeue(st.UntilProbe), Err: err}
	}
	return err
}

// result classifies the end of a call for the circuit.
func (r *Resender) result(ctx context.Context, adm admission, err error) rdb.OutageResult {
	if err == nil {
		return rdb.OutageOK
	}
	var rl *ratelimit.Error
	var fl *inflight.Error
	if errors.As(err, &rl) || errors.As(err, &fl) || errors.Is(ctx.Err(), context.Canceled) {
		return rdb.OutageNeutral // never reached the provider, or stopped by us
	}
	if providers.Classify(err) == providers.Transient {
		return rdb.OutageFail
	}
	if adm.Probe {
		// A probe answered with a rate limit, a permanent or a
		// configuration error: the provider is up.
		return rdb.OutageOK
	}
	return rdb.OutageNeutral
}

// requeue is how long a held-back task goes back for: until the next probe
// may start, plus up to half an interval of jitter so that the tasks held
// back together come back spread out, after the probe had time to answer.
func (r *Resender) requeue(untilProbe time.Duration) time.Duration {
	return max(untilProbe, 0) + time.Second + rand.N(r.cfg.ProbeInterval/2+1)
}

func newToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Error is a call held back, or a failure turned into a requeue, because
// the provider's circuit is open.
type Error struct {
	Provider   providers.Name
	RetryAfter time.Duration
	// Err is the provider's failure when the call was sent (it failed
	// while the circuit was open); nil when it was not sent.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: provider outage (circuit open): %v; next try in %s (%s)",
			e.Provider, e.Err, e.RetryAfter.Round(time.Second), providers.RateLimited)
	}
	return fmt.Sprintf("%s: request not sent: provider outage (circuit open); next try in %s (%s)",
		e.Provider, e.RetryAfter.Round(time.Second), providers.RateLimited)
}

// Unwrap returns the provider's failure, if any.
func (e *Error) Unwrap() error { return e.Err }

// Detail implements providers.DetailedError.
func (e *Error) Detail() providers.Detail {
	d := providers.Detail{Provider: e.Provider, Class: providers.RateLimited, Code: Code, RetryAfter: e.RetryAfter, NotSent: e.Err == nil,
		Message: "provider circuit open after repeated transient failures; not sent"}
	if e.Err != nil {
		inner := providers.Describe(e.Err)
		d.StatusCode, d.Message = inner.StatusCode, "provider circuit open: "+inner.Message
	}
	return d
}

var _ providers.Resender = (*Resender)(nil)
