package opensrs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/httpx"
)

// Endpoints (docs/opensrs.md §1). Horizon is the test environment; it uses a
// different API key from live.
const (
	LiveURL = "https://rr-n1-tor.opensrs.net:55443/"
	TestURL = "https://horizon.opensrs.net:55443/"
)

// Defaults.
const (
	DefaultTimeout   = 90 * time.Second
	DefaultUserAgent = "certmail-opensrs/1"
	objectTrust      = "trust_service"
	actionCert       = "resend_cert_email"
	actionApprove    = "resend_approve_email"
	snippetLen       = 200
)

// Client calls the OpenSRS XCP API. It is safe for concurrent use.
type Client struct {
	baseURL   *url.URL
	username  string
	apiKey    httpx.Secret
	hc        *http.Client // the caller's (WithHTTPClient), nil for the default
	maxConns  int
	call      *httpx.Caller
	timeout   time.Duration
	userAgent string
}

var _ providers.Resender = (*Client)(nil)

// Option configures a Client in New.
type Option func(*Client) error

// WithBaseURL sets the endpoint. It must be an absolute https URL ending in
// "/" (http is accepted only for loopback hosts, for tests and simulators).
// The default is LiveURL.
func WithBaseURL(raw string) Option {
	return func(c *Client) error {
		u, err := httpx.ParseBaseURL(raw)
		if err != nil {
			return fmt.Errorf("opensrs: %w", err)
		}
		c.baseURL = u
		return nil
	}
}

// WithCredentials sets the primary reseller username of the environment and
// its API key. Both are required.
func WithCredentials(username, apiKey string) Option {
	return func(c *Client) error {
		if username == "" || apiKey == "" {
			return errors.New("opensrs: username and API key are required")
		}
		if !headerSafe(username) {
			return errors.New("opensrs: username contains characters not allowed in a header")
		}
		for _, r := range apiKey {
			if r <= ' ' || r >= 0x7f {
				return errors.New("opensrs: API key must be printable ASCII without spaces")
			}
		}
		c.username, c.apiKey = username, httpx.Secret(apiKey)
		return nil
	}
}

func headerSafe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return false
		}
	}
	return strings.TrimSpace(s) == s
}

// WithHTTPClient sets the HTTP client. It must not be nil and must not skip
// TLS verification. The client is copied and redirects are never followed.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("opensrs: nil HTTP client")
		}
		if err := httpx.CheckHTTPClient(hc); err != nil {
			return fmt.Errorf("opensrs: %w", err)
		}
		c.hc = hc
		return nil
	}
}

// WithMaxConns sizes the connection pool: at most n connections to OpenSRS,
// all kept for reuse. Give it the number of calls that may run at once (the
// worker's concurrency). Default httpx.DefaultMaxConns.
func WithMaxConns(n int) Option {
	return func(c *Client) error {
		if n < 1 {
			return fmt.Errorf("opensrs: max connections must be at least 1, got %d", n)
		}
		c.maxConns = n
		return nil
	}
}

// WithTimeout bounds each call (connect, request and reply) with a context
// deadline; the default is 90s (OpenSRS's own server timeout is 80s).
func WithTimeout(d time.Duration) Option {
	return func(c *Client) error {
		if d <= 0 {
			return fmt.Errorf("opensrs: timeout must be positive, got %v", d)
		}
		c.timeout = d
		return nil
	}
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(c *Client) error {
		if ua == "" || !headerSafe(ua) {
			return fmt.Errorf("opensrs: invalid user agent %q", ua)
		}
		c.userAgent = ua
		return nil
	}
}

// New returns a client. WithCredentials is required.
func New(opts ...Option) (*Client, error) {
	base, _ := url.Parse(LiveURL)
	c := &Client{baseURL: base, timeout: DefaultTimeout, userAgent: DefaultUserAgent}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(c); err != nil {
			return nil, err
		}
	}
	if c.username == "" || c.apiKey == "" {
		return nil, errors.New("opensrs: credentials are required (WithCredentials)")
	}
	call, err := httpx.New(httpx.Config{HTTPClient: c.hc, MaxConns: c.maxConns, Timeout: c.timeout})
	if err != nil {
		return nil, fmt.Errorf("opensrs: %w", err)
	}
	c.call = call
	return c, nil
}

// String describes the client without its API key.
func (c Client) String() string {
	return fmt.Sprintf("opensrs.Client{baseURL: %s, username: %s, apiKey: [redacted], timeout: %v}", c.baseURL, c.username, c.timeout)
}

// GoString is String, so %#v does not print the key either.
func (c Client) GoString() string { return c.String() }

// Format prints String for every verb.
func (c Client) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// ResendCertEmail resends the certificate (fulfilment) email of a completed
// trust service order. On an OPS error reply it returns the decoded reply
// and an *APIError.
//
// OpenSRS API docs: https://domains.opensrs.guide/docs/resend_cert_email
func (c *Client) ResendCertEmail(ctx context.Context, orderID string) (*Reply, error) {
	return c.do(ctx, actionCert, orderID)
}

// ResendApproveEmail resends the DCV approver email of a trust service order
// awaiting approval. On an OPS error reply it returns the decoded reply and
// an *APIError.
//
// OpenSRS API docs: https://domains.opensrs.guide/docs/resend_approve_email
func (c *Client) ResendApproveEmail(ctx context.Context, orderID string) (*Reply, error) {
	return c.do(ctx, actionApprove, orderID)
}

// Resend implements providers.Resender: an empty Action or
// ActionResendCertEmail calls resend_cert_email, ActionResendApproveEmail
// calls resend_approve_email, any other action is a permanent error.
//
// OpenSRS API docs: https://domains.opensrs.guide/docs/resend_cert_email
func (c *Client) Resend(ctx context.Context, req providers.Request) (providers.Result, error) {
	var (
		rep *Reply
		err error
	)
	switch req.Action {
	case "", providers.ActionResendCertEmail:
		rep, err = c.ResendCertEmail(ctx, req.OrderID)
	case providers.ActionResendApproveEmail:
		rep, err = c.ResendApproveEmail(ctx, req.OrderID)
	default:
		return providers.Result{}, &APIError{
			Class:   providers.Permanent,
			Message: fmt.Sprintf("unsupported action %q", string(req.Action)),
		}
	}
	if err != nil {
		return providers.Result{}, err
	}
	return providers.Result{
		Provider:   providers.OpenSRS,
		StatusCode: rep.StatusCode,
		Code:       rep.ResponseCode,
		Message:    rep.Message(),
	}, nil
}

// do makes the one HTTP request of a call through the shared call layer and
// interprets the reply.
func (c *Client) do(ctx context.Context, action, orderID string) (*Reply, error) {
	body, err := encodeRequest(action, objectTrust, assoc{{"order_id", orderID}})
	if err != nil {
		return nil, &APIError{Class: providers.Permanent, Message: "encoding request: " + err.Error(), NotSent: true, Err: err}
	}
	h := http.Header{}
	h.Set("Content-Type", "text/xml")
	h.Set("X-Username", c.username)
	h.Set("X-Signature", Sign(body, c.apiKey.Reveal()))
	h.Set("User-Agent", c.userAgent)
	h.Set("Accept", "text/xml")
	rep, err := c.call.Do(ctx, http.MethodPost, c.baseURL.String(), h, body)
	if err != nil {
		var he *httpx.Error
		if !errors.As(err, &he) {
			return nil, &APIError{Class: providers.Transient, Message: c.apiKey.Scrub(err.Error()), Err: err}
		}
		return nil, c.transportError(he)
	}
	if re := rep.ReadErr; re != nil {
		if re.Canceled != nil {
			return nil, c.cancelled(re.Canceled, re.Err, false)
		}
		e := &APIError{StatusCode: rep.StatusCode, Class: providers.Transient, Err: re.Err,
			Message: "reading reply: " + c.apiKey.Scrub(re.Err.Error())}
		if re.TimedOut {
			e.Message = fmt.Sprintf("no complete reply within %v", c.timeout)
		}
		return nil, e
	}
	if rep.TooLarge {
		class := providers.Permanent
		if rep.StatusCode >= 500 {
			class = providers.Transient
		}
		return nil, &APIError{StatusCode: rep.StatusCode, Class: class, Message: "reply larger than 1 MiB"}
	}
	return c.checkResponse(rep)
}

// checkResponse turns an HTTP response and its body into a Reply or an
// *APIError. An OPS reply decides by is_success whatever the HTTP status;
// without one the HTTP status decides: 5xx transient, anything else
// (including a 2xx with an unreadable body) permanent.
func (c *Client) checkResponse(resp *httpx.Reply) (*Reply, error) {
	data := resp.Body
	rep, derr := decodeReply(data)
	if derr == nil {
		rep.StatusCode = resp.StatusCode
		if rep.IsSuccess {
			return rep, nil
		}
		e := &APIError{
			StatusCode: resp.StatusCode,
			Code:       rep.ResponseCode,
			Message:    c.apiKey.Scrub(rep.Message()),
			Class:      ClassifyCode(rep.ResponseCode, rep.ResponseText),
		}
		if e.Code == "" {
			e.Code = "0"
		}
		if e.Class == providers.Configuration {
			if h := hintFor(rep.ResponseCode, rep.ResponseText); h != "" {
				e.Message += ": " + h
			}
		}
		if e.Class == providers.RateLimited {
			e.RetryAfter, _ = resp.RetryAfter()
		}
		return rep, e
	}
	e := &APIError{StatusCode: resp.StatusCode, Err: derr, Message: c.apiKey.Scrub(snippet(data))}
	switch {
	case resp.StatusCode >= 500:
		e.Class = providers.Transient
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		e.Class = providers.Permanent
		e.Message = "malformed OPS reply: " + c.apiKey.Scrub(derr.Error())
	default:
		e.Class = providers.Permanent
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.Class = providers.RateLimited
		e.RetryAfter, _ = resp.RetryAfter()
	}
	return nil, e
}

// transportError classifies a call that got no reply. The layer decided
// NotSent; OpenSRS's part is the class and the words.
func (c *Client) transportError(he *httpx.Error) error {
	notSent := he.NotSent
	if he.Canceled != nil {
		return c.cancelled(he.Canceled, he.Err, notSent)
	}
	msg := c.apiKey.Scrub(he.Err.Error())
	e := &APIError{Class: providers.Transient, NotSent: notSent, Err: he.Err}
	switch {
	case he.Build:
		e.Class = providers.Configuration
		e.Message = "building request: " + msg
	case he.TimedOut:
		if notSent {
			e.Message = fmt.Sprintf("request not sent: no connection within %v: %s", c.timeout, msg)
		} else {
			e.Message = fmt.Sprintf("no reply within %v (the email may have been sent)", c.timeout)
		}
	case he.TLSVerify():
		e.Class = providers.Configuration
		e.Message = "TLS certificate verification failed: " + msg + "; check the base URL and the system trust store (verification is never disabled)"
	case isBareXML(msg):
		e.Class = providers.Configuration
		e.NotSent = false
		e.Message = "OpenSRS answered with bare XML and no HTTP status line, which is how it rejects callers whose IP address is not allowed: " + AllowListHint
	case notSent:
		e.Message = "request not sent: " + msg
	default:
		e.Message = "request sent, no reply (the email may have been sent): " + msg
	}
	return e
}

// cancelled reports a call abandoned because the caller's context ended; the
// error wraps ctxErr so errors.Is(err, context.Canceled) works.
func (c *Client) cancelled(ctxErr, err error, notSent bool) error {
	wrapped := ctxErr
	if err != nil && !errors.Is(err, ctxErr) {
		wrapped = fmt.Errorf("%w: %w", ctxErr, err)
	} else if err != nil {
		wrapped = err
	}
	msg := "call cancelled: " + ctxErr.Error()
	if notSent {
		msg = "request not sent: " + ctxErr.Error()
	}
	return &APIError{Class: providers.Transient, NotSent: notSent, Message: msg, Err: wrapped}
}

// isBareXML recognises net/http's complaint about a reply that starts with
// XML instead of an HTTP status line. Depending on the first line Go reports
// `malformed HTTP response "<OPS_envelope>"` (no space in it) or, for an XML
// declaration such as "<?xml version='1.0' …", `malformed HTTP status code
// "version='1.0'"` (it took "<?xml" for the protocol).
func isBareXML(msg string) bool {
	for _, p := range []string{
		`malformed HTTP response "<`,
		`malformed HTTP status code "version=`,
		`malformed HTTP version "<`,
	} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func snippet(data []byte) string {
	s := strings.TrimSpace(string(data))
	if len(s) > snippetLen {
		s = s[:snippetLen]
		for !utf8.ValidString(s) && len(s) > 0 {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
