package opensrs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redact"
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
	dialTimeout      = 10 * time.Second
	tlsTimeout       = 10 * time.Second
	maxReplySize     = 1 << 20
	objectTrust      = "trust_service"
	actionCert       = "resend_cert_email"
	actionApprove    = "resend_approve_email"
	snippetLen       = 200
)

// secret holds the API key. The Client keeps a pointer to it, so printing a
// Client value shows an address, and every fmt verb on the secret itself
// prints [redacted].
type secret struct{ key string }

func (*secret) String() string             { return "[redacted]" }
func (*secret) GoString() string           { return "[redacted]" }
func (*secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted]") }

func (s *secret) reveal() string {
	if s == nil {
		return ""
	}
	return s.key
}

func (s *secret) redact(text string) string { return redactKey(text, s.reveal()) }

func redactKey(text, key string) string {
	if key == "" {
		return text
	}
	return strings.ReplaceAll(text, key, "[redacted]")
}

// Client calls the OpenSRS XCP API. It is safe for concurrent use.
type Client struct {
	baseURL   *url.URL
	username  string
	apiKey    *secret
	hc        *http.Client
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
		u, err := parseBaseURL(raw)
		if err != nil {
			return err
		}
		c.baseURL = u
		return nil
	}
}

func parseBaseURL(raw string) (*url.URL, error) {
	// Messages show the URL without its user info and never quote a
	// url.Parse error: those repeat the whole URL, password included.
	shown := redact.URL(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("opensrs: invalid base URL %q: %s", shown, redact.URLParseError(err))
	}
	switch {
	case !u.IsAbs() || u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("opensrs: base URL %q is not absolute", shown)
	case u.User != nil:
		return nil, fmt.Errorf("opensrs: base URL %q must not contain credentials", shown)
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("opensrs: base URL %q must not have a query or fragment", shown)
	case !strings.HasSuffix(u.Path, "/"):
		return nil, fmt.Errorf("opensrs: base URL %q must end in \"/\"", shown)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("opensrs: base URL %q must use https (http only for loopback hosts)", shown)
		}
	default:
		return nil, fmt.Errorf("opensrs: base URL %q must use https", shown)
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
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
		c.username, c.apiKey = username, &secret{apiKey}
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
		if t, ok := hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
			return errors.New("opensrs: HTTP client skips TLS verification; refusing it")
		}
		cp := *hc
		cp.CheckRedirect = noRedirect
		c.hc = &cp
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

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

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
	if c.username == "" || c.apiKey.reveal() == "" {
		return nil, errors.New("opensrs: credentials are required (WithCredentials)")
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient()
	}
	return c, nil
}

func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = tlsTimeout
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: t, CheckRedirect: noRedirect}
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

// traceState records how far the request got, from httptrace callbacks that
// run on transport goroutines.
type traceState struct {
	gotConn   atomic.Bool
	wrote     atomic.Bool
	wroteFail atomic.Bool
}

// notSent reports whether the request provably never reached the server: no
// connection was obtained, or writing it failed. A request whose write was
// not yet reported counts as sent (the bytes may be on the wire).
func (s *traceState) notSent() bool {
	return !s.gotConn.Load() || s.wroteFail.Load()
}

// do makes the one HTTP request of a call and interprets the reply.
func (c *Client) do(ctx context.Context, action, orderID string) (*Reply, error) {
	body, err := encodeRequest(action, objectTrust, assoc{{"order_id", orderID}})
	if err != nil {
		return nil, &APIError{Class: providers.Permanent, Message: "encoding request: " + err.Error(), NotSent: true, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, c.cancelled(err, nil, true)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var st traceState
	callCtx = httptrace.WithClientTrace(callCtx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { st.gotConn.Store(true) },
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err != nil {
				st.wroteFail.Store(true)
			} else {
				st.wrote.Store(true)
			}
		},
	})
	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, c.baseURL.String(), bytes.NewReader(body))
	if err != nil {
		return nil, &APIError{Class: providers.Configuration, Message: "building request: " + c.apiKey.redact(err.Error()), NotSent: true, Err: err}
	}
	req.Header.Set("Content-Type", "text/xml")
	req.Header.Set("X-Username", c.username)
	req.Header.Set("X-Signature", Sign(body, c.apiKey.reveal()))
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "text/xml")

	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, callCtx, err, &st)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplySize+1))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, c.cancelled(ctxErr, err, false)
		}
		e := &APIError{StatusCode: resp.StatusCode, Class: providers.Transient, Err: err,
			Message: "reading reply: " + c.apiKey.redact(innerError(err).Error())}
		if callCtx.Err() != nil {
			e.Message = fmt.Sprintf("no complete reply within %v", c.timeout)
		}
		return nil, e
	}
	if len(data) > maxReplySize {
		class := providers.Permanent
		if resp.StatusCode >= 500 {
			class = providers.Transient
		}
		return nil, &APIError{StatusCode: resp.StatusCode, Class: class, Message: "reply larger than 1 MiB"}
	}
	return c.checkResponse(resp, data)
}

// checkResponse turns an HTTP response and its body into a Reply or an
// *APIError. An OPS reply decides by is_success whatever the HTTP status;
// without one the HTTP status decides: 5xx transient, anything else
// (including a 2xx with an unreadable body) permanent.
func (c *Client) checkResponse(resp *http.Response, data []byte) (*Reply, error) {
	rep, derr := decodeReply(data)
	if derr == nil {
		rep.StatusCode = resp.StatusCode
		if rep.IsSuccess {
			return rep, nil
		}
		e := &APIError{
			StatusCode: resp.StatusCode,
			Code:       rep.ResponseCode,
			Message:    c.apiKey.redact(rep.Message()),
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
			e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"))
		}
		return rep, e
	}
	e := &APIError{StatusCode: resp.StatusCode, Err: derr, Message: c.apiKey.redact(snippet(data))}
	switch {
	case resp.StatusCode >= 500:
		e.Class = providers.Transient
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		e.Class = providers.Permanent
		e.Message = "malformed OPS reply: " + c.apiKey.redact(derr.Error())
	default:
		e.Class = providers.Permanent
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.Class = providers.RateLimited
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"))
	}
	return nil, e
}

// transportError classifies a failed http.Client.Do.
func (c *Client) transportError(parent, callCtx context.Context, err error, st *traceState) error {
	notSent := st.notSent()
	if ctxErr := parent.Err(); ctxErr != nil {
		return c.cancelled(ctxErr, err, notSent)
	}
	inner := innerError(err)
	msg := c.apiKey.redact(inner.Error())
	e := &APIError{Class: providers.Transient, NotSent: notSent, Err: err}
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case callCtx.Err() != nil:
		if notSent {
			e.Message = fmt.Sprintf("request not sent: no connection within %v: %s", c.timeout, msg)
		} else {
			e.Message = fmt.Sprintf("no reply within %v (the email may have been sent)", c.timeout)
		}
	case errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid):
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

// innerError strips the *url.Error wrapper ("Post \"https://…\": …").
func innerError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
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

// retryAfter is the Retry-After hint, 0 (none: the worker's default wait)
// when absent or malformed.
func retryAfter(v string) time.Duration {
	d, _ := providers.ParseRetryAfter(v, time.Now())
	return d
}
