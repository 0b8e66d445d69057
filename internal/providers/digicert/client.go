package digicert

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/httpx"
)

// Base URLs of the two CertCentral instances. An API key belongs to one of
// them; the CertCentral console shows "CertCentral Europe" for EU accounts.
const (
	USURL = "https://www.digicert.com/services/v2/"
	EUURL = "https://certcentral.digicert.eu/services/v2/"
)

// Defaults used by New when the corresponding option is not given.
const (
	DefaultBaseURL       = USURL
	DefaultUserAgent     = "certmail/1.0"
	DefaultTimeout       = 90 * time.Second
	DefaultRateLimitWait = 5 * time.Second
)

// redacted replaces the API key wherever a value could be printed.
const redacted = httpx.Redacted

// Client calls the CertCentral Services API. Create it with New; it is safe
// for concurrent use.
type Client struct {
	baseURL       *url.URL
	apiKey        httpx.Secret
	call          *httpx.Caller
	timeout       time.Duration
	userAgent     string
	rateLimitWait time.Duration
}

var _ providers.Resender = (*Client)(nil)

// Option configures a Client in New. Options validate their argument and
// make New fail on invalid values.
type Option func(*config) error

type config struct {
	baseURL       string
	apiKey        httpx.Secret
	httpClient    *http.Client
	maxConns      int
	timeout       time.Duration
	userAgent     string
	rateLimitWait time.Duration
}

// WithBaseURL sets the API base URL, e.g. USURL or EUURL. It must be an
// absolute https URL ending in "/"; http is accepted only for loopback hosts
// (tests and the digicerttest simulator). Default USURL.
func WithBaseURL(rawURL string) Option {
	return func(c *config) error {
		c.baseURL = rawURL
		return nil
	}
}

// WithAPIKey sets the CertCentral API key sent as X-DC-DEVKEY. Required.
func WithAPIKey(key string) Option {
	return func(c *config) error {
		if key == "" {
			return errors.New("digicert: API key is empty")
		}
		if strings.TrimSpace(key) != key {
			return errors.New("digicert: API key has leading or trailing white space")
		}
		for i := 0; i < len(key); i++ {
			if b := key[i]; b < 0x20 || b == 0x7f {
				return errors.New("digicert: API key contains control characters")
			}
		}
		c.apiKey = httpx.Secret(key)
		return nil
	}
}

// WithHTTPClient sets the HTTP client. The Client uses a shallow copy whose
// CheckRedirect refuses to follow redirects, so the API key is never sent
// to a redirect target. A client that skips TLS verification is refused.
// The default client (httpx.NewTransport) has 10 s dial and TLS handshake
// timeouts and always verifies certificates.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *config) error {
		if hc == nil {
			return errors.New("digicert: HTTP client is nil")
		}
		if err := httpx.CheckHTTPClient(hc); err != nil {
			return fmt.Errorf("digicert: %w", err)
		}
		c.httpClient = hc
		return nil
	}
}

// WithMaxConns sizes the connection pool: at most n connections to
// DigiCert, all kept for reuse. Give it the number of calls that may run at
// once (the worker's concurrency). Default httpx.DefaultMaxConns.
func WithMaxConns(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("digicert: max connections %d is less than 1", n)
		}
		c.maxConns = n
		return nil
	}
}

// WithTimeout bounds each call (connect, send and read the reply) with a
// context deadline, whatever the HTTP client's own settings. Default 90 s.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("digicert: timeout %s is not positive", d)
		}
		c.timeout = d
		return nil
	}
}

// WithUserAgent sets the User-Agent header. Default "certmail/1.0".
func WithUserAgent(ua string) Option {
	return func(c *config) error {
		if strings.TrimSpace(ua) == "" {
			return errors.New("digicert: user agent is empty")
		}
		if strings.ContainsAny(ua, "\r\n\x00") {
			return errors.New("digicert: user agent contains control characters")
		}
		c.userAgent = ua
		return nil
	}
}

// WithDefaultRateLimitWait sets the RetryAfter reported for a 429 reply that
// carries no Retry-After header (DigiCert documents none). Default 5 s.
func WithDefaultRateLimitWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("digicert: default rate-limit wait %s is negative", d)
		}
		c.rateLimitWait = d
		return nil
	}
}

// New returns a Client configured by opts. WithAPIKey is required.
func New(opts ...Option) (*Client, error) {
	cfg := config{
		baseURL:       DefaultBaseURL,
		timeout:       DefaultTimeout,
		userAgent:     DefaultUserAgent,
		rateLimitWait: DefaultRateLimitWait,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("digicert: nil option")
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.apiKey == "" {
		return nil, errors.New("digicert: API key is required (WithAPIKey)")
	}
	base, err := httpx.ParseBaseURL(cfg.baseURL)
	if err != nil {
		return nil, fmt.Errorf("digicert: %w", err)
	}
	call, err := httpx.New(httpx.Config{HTTPClient: cfg.httpClient, MaxConns: cfg.maxConns, Timeout: cfg.timeout})
	if err != nil {
		return nil, fmt.Errorf("digicert: %w", err)
	}
	return &Client{
		baseURL:       base,
		apiKey:        cfg.apiKey,
		call:          call,
		timeout:       cfg.timeout,
		userAgent:     cfg.userAgent,
		rateLimitWait: cfg.rateLimitWait,
	}, nil
}

// String describes the client without its API key.
func (c Client) String() string {
	base := ""
	if c.baseURL != nil {
		base = c.baseURL.String()
	}
	return fmt.Sprintf("digicert.Client{baseURL: %q, apiKey: %s, userAgent: %q, timeout: %s, rateLimitWait: %s}",
		base, redacted, c.userAgent, c.timeout, c.rateLimitWait)
}

// GoString is String, so %#v never prints the API key.
func (c Client) GoString() string { return c.String() }

// Format prints String for every verb, so no verb prints the API key.
func (c Client) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }
