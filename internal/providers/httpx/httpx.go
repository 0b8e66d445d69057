package httpx

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/certmail/certmail/internal/providers"
)

const (
	// MaxBodySize is the most Do reads of any reply (1 MiB, go-github's
	// maxErrorBodySize): a provider's answer is a few hundred bytes, so more
	// is a misbehaving server and must not cost the worker memory.
	MaxBodySize = 1 << 20
	// ConnectTimeout bounds the TCP connect and, separately, the TLS
	// handshake of a new connection. It is much shorter than a call's total
	// timeout so that an unreachable provider fails fast as NotSent.
	ConnectTimeout = 10 * time.Second
	// DefaultMaxConns is the pool size without Config.MaxConns; it matches
	// the worker's default concurrency (WORKER_CONCURRENCY=20).
	DefaultMaxConns = 20
)

// Config configures a Caller.
type Config struct {
	// HTTPClient is a caller-supplied client (tests, simulators with their
	// own certificate). It is copied, never modified; it must pass
	// CheckHTTPClient. Nil means a client on NewTransport(MaxConns).
	HTTPClient *http.Client
	// MaxConns sizes the connection pool: at most this many connections to
	// the provider, all kept for reuse when idle. Set it to the number of
	// calls that may run at once (the worker's concurrency); Go's default of
	// 2 idle connections per host would make most concurrent calls pay a new
	// TCP and TLS handshake. 0 means DefaultMaxConns for the default
	// transport and leaves a caller-supplied transport as it is.
	MaxConns int
	// Timeout bounds each call, connect to last byte of the reply,
	// whatever the HTTP client's own settings. It must be positive.
	Timeout time.Duration
}

// Caller makes provider calls. It is safe for concurrent use.
type Caller struct {
	hc      *http.Client
	timeout time.Duration
}

// CheckHTTPClient refuses a caller-supplied client that would skip TLS
// verification: a skipped check hands the API key to whoever answers.
func CheckHTTPClient(hc *http.Client) error {
	if t, ok := hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
		return errInsecure
	}
	return nil
}

// NewTransport returns the transport of the default client: at most
// maxConns connections to a host, all of them kept when idle, 10 s connect
// and TLS handshake timeouts, certificates always verified (TLS 1.2 or
// later). maxConns < 1 means DefaultMaxConns.
func NewTransport(maxConns int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = ConnectTimeout
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	sizePool(t, maxConns)
	return t
}

func sizePool(t *http.Transport, maxConns int) {
	if maxConns < 1 {
		maxConns = DefaultMaxConns
	}
	t.MaxConnsPerHost = maxConns
	t.MaxIdleConnsPerHost = maxConns
	t.MaxIdleConns = max(t.MaxIdleConns, maxConns)
}

// New returns a Caller. It fails only for a client CheckHTTPClient refuses.
func New(cfg Config) (*Caller, error) {
	var hc *http.Client
	if cfg.HTTPClient != nil {
		if err := CheckHTTPClient(cfg.HTTPClient); err != nil {
			return nil, err
		}
		cp := *cfg.HTTPClient
		hc = &cp
		// The caller's pool is sized only when asked to: its transport is
		// cloned, never changed underneath it.
		if t, ok := hc.Transport.(*http.Transport); ok && cfg.MaxConns > 0 {
			t = t.Clone()
			sizePool(t, cfg.MaxConns)
			hc.Transport = t
		}
	} else {
		hc = &http.Client{Transport: NewTransport(cfg.MaxConns)}
	}
	hc.CheckRedirect = noRedirect
	return &Caller{hc: hc, timeout: cfg.Timeout}, nil
}

// noRedirect hands a 3xx back to the client as the reply: following it would
// send the API key to the redirect target.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Timeout is the per-call timeout.
func (c *Caller) Timeout() time.Duration { return c.timeout }

// Reply is an HTTP response whose body has been read and closed.
type Reply struct {
	StatusCode int
	Header     http.Header
	// Body is the reply body, at most MaxBodySize bytes of it.
	Body []byte
	// TooLarge says the body was longer than MaxBodySize; Body is cut.
	TooLarge bool
	// ReadErr is set when reading the body failed part-way (reset, the
	// call's timeout, the caller cancelling); Body holds what arrived.
	ReadErr *Error
}

// RetryAfter is the reply's Retry-After hint, capped at
// providers.MaxRetryAfter; ok is false when there is none or it is malformed.
func (r *Reply) RetryAfter() (time.Duration, bool) {
	return providers.ParseRetryAfter(r.Header.Get("Retry-After"), time.Now())
}

// Error is a call that produced no HTTP reply, or a reply whose body could
// not be read. The clients turn it into their own error type.
type Error struct {
	// Err is the cause, without net/http's *url.Error wrapper (whose text
	// repeats the method and URL).
	Err error
	// NotSent is true when no byte of the request can have reached the
	// provider: the transport never obtained a connection (DNS failure,
	// connection refused, connect timeout, TLS handshake or certificate
	// failure, the caller cancelling first). Once a connection is obtained,
	// any failure counts as possibly sent, even a write that failed: a
	// partial request may already be on the wire, and a server may act on
	// what it read. This is the one case where retrying inside the same
	// attempt cannot send a customer a second email.
	NotSent bool
	// Canceled is the caller's context error when the caller gave up.
	Canceled error
	// TimedOut says the call's own timeout (Config.Timeout) expired while
	// the caller was still waiting.
	TimedOut bool
	// Build says the request could not even be built (a bad URL or
	// header): a configuration problem, never sent.
	Build bool
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// TLSVerify reports whether the failure is a rejected server certificate,
// which is a configuration problem (wrong base URL, missing trust anchor),
// never worth a retry.
func (e *Error) TLSVerify() bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	return errors.As(e.Err, &verr) || errors.As(e.Err, &uerr) || errors.As(e.Err, &herr) || errors.As(e.Err, &cerr)
}

// Do sends one request and reads the reply. It never retries: every
// delivered request sends a real email. The error is an *Error when no
// reply was received; a reply with any status is returned as a *Reply, the
// status is the client's to judge (its CheckResponse).
func (c *Caller) Do(ctx context.Context, method, rawURL string, header http.Header, body []byte) (*Reply, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Err: err, NotSent: true, Canceled: err}
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// GotConn fires, for a new and a reused connection alike, before the
	// transport writes the first byte of the request; without it nothing
	// of this request was written anywhere.
	var gotConn atomic.Bool
	callCtx = httptrace.WithClientTrace(callCtx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})
	req, err := http.NewRequestWithContext(callCtx, method, rawURL, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Err: unwrapURLError(err), NotSent: true, Build: true}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, classify(ctx, callCtx, err, gotConn.Load())
	}
	defer resp.Body.Close()
	r := &Reply{StatusCode: resp.StatusCode, Header: resp.Header}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodySize+1))
	if len(data) > MaxBodySize {
		r.TooLarge, data = true, data[:MaxBodySize]
	}
	r.Body = data
	if err != nil {
		r.ReadErr = classify(ctx, callCtx, err, true)
	}
	return r, nil
}

// classify describes a failed send or read. parent is the caller's context,
// callCtx the call's (with the timeout); gotConn whether the transport
// reported a connection for this request.
func classify(parent, callCtx context.Context, err error, gotConn bool) *Error {
	e := &Error{Err: unwrapURLError(err), NotSent: !gotConn}
	if cerr := parent.Err(); cerr != nil {
		e.Canceled = cerr
	} else if callCtx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		e.TimedOut = true
	}
	return e
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}
