package digicert

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redact"
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

const (
	// maxBodySize is the most New's client reads of any reply.
	maxBodySize = 1 << 20
	dialTimeout = 10 * time.Second
	tlsTimeout  = 10 * time.Second
)

// redacted replaces the API key wherever a value could be printed.
const redacted = "[redacted]"

// secret holds the API key. Every formatting path prints "[redacted]", so
// the key cannot leak through logs or %v/%+v/%#v of a value holding it.
type secret string

func (secret) String() string               { return redacted }
func (secret) GoString() string             { return redacted }
func (secret) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, redacted) }
func (secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (s secret) reveal() string             { return string(s) }

// Client calls the CertCentral Services API. Create it with New; it is safe
// for concurrent use.
type Client struct {
	baseURL       *url.URL
	apiKey        secret
	httpClient    *http.Client
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
	apiKey        secret
	httpClient    *http.Client
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
		c.apiKey = secret(key)
		return nil
	}
}

// WithHTTPClient sets the HTTP client. The Client uses a shallow copy whose
// CheckRedirect refuses to follow redirects, so the API key is never sent
// to a redirect target. The default client has 10 s dial and TLS handshake
// timeouts and always verifies certificates.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *config) error {
		if hc == nil {
			return errors.New("digicert: HTTP client is nil")
		}
		// TLS verification is never off: a skipped check would hand the
		// API key to whoever answers.
		if t, ok := hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
			return errors.New("digicert: HTTP client skips TLS verification; refusing it")
		}
		c.httpClient = hc
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
	base, err := parseBaseURL(cfg.baseURL)
	if err != nil {
		return nil, err
	}
	var hc *http.Client
	if cfg.httpClient != nil {
		cp := *cfg.httpClient
		hc = &cp
	} else {
		hc = &http.Client{Transport: defaultTransport()}
	}
	hc.CheckRedirect = noRedirect
	return &Client{
		baseURL:       base,
		apiKey:        cfg.apiKey,
		httpClient:    hc,
		timeout:       cfg.timeout,
		userAgent:     cfg.userAgent,
		rateLimitWait: cfg.rateLimitWait,
	}, nil
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = tlsTimeout
	// TLSClientConfig stays nil or as cloned: certificates are always verified.
	return t
}

func parseBaseURL(raw string) (*url.URL, error) {
	// Messages show the URL without its user info and never quote a
	// url.Parse error: those repeat the whole URL, password included.
	shown := redact.URL(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("digicert: invalid base URL %q: %s", shown, redact.URLParseError(err))
	}
	if u.User != nil {
		return nil, errors.New("digicert: base URL must not contain user info")
	}
	if !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("digicert: base URL %q is not an absolute URL", shown)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("digicert: base URL %q: http is allowed only for loopback hosts", shown)
		}
	default:
		return nil, fmt.Errorf("digicert: base URL %q: scheme must be https", shown)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("digicert: base URL %q must not have a query or fragment", shown)
	}
	if !strings.HasSuffix(u.Path, "/") {
		return nil, fmt.Errorf("digicert: base URL %q must end with a slash", shown)
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
