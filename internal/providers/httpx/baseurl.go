package httpx

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"github.com/certmail/certmail/internal/redact"
)

// ParseBaseURL parses and checks a provider base URL: absolute, https (http
// only for loopback hosts, i.e. tests and simulators), no user info, query
// or fragment, and a path ending in "/" so that API paths are appended below
// it. Messages show the URL with its user info masked and never quote a
// url.Parse error, which repeats the whole URL, password included.
func ParseBaseURL(raw string) (*url.URL, error) {
	shown := redact.URL(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid base URL %q: %s", shown, redact.URLParseError(err))
	}
	switch {
	case u.User != nil:
		return nil, fmt.Errorf("base URL %q must not contain credentials (user info)", shown)
	case !u.IsAbs() || u.Opaque != "" || u.Hostname() == "":
		return nil, fmt.Errorf("base URL %q is not absolute", shown)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !IsLoopback(u.Hostname()) {
			return nil, fmt.Errorf("base URL %q must use https (http only for loopback hosts)", shown)
		}
	default:
		return nil, fmt.Errorf("base URL %q must use https", shown)
	}
	switch {
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("base URL %q must not have a query or fragment", shown)
	case !strings.HasSuffix(u.Path, "/"):
		return nil, fmt.Errorf("base URL %q must end in \"/\" (a slash)", shown)
	}
	return u, nil
}

// IsLoopback reports whether host (without port) is "localhost" or a
// loopback IP address, the only hosts plain http may be used with.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// errInsecure is returned for a caller-supplied client that skips TLS
// verification.
var errInsecure = errors.New("HTTP client skips TLS verification; refusing it")
