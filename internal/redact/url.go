package redact

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

// URL returns raw fit for a message: any user info (user and password) is
// replaced by "xxxxx", also when raw does not parse as a URL (url.Parse
// errors quote the whole URL, password included, so they must not be shown
// either; see URLParseError).
func URL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Opaque == "" {
		if u.User != nil {
			u.User = url.User("xxxxx")
		}
		return u.String()
	}
	// Unparseable, or opaque ("user:pass@host" reads as scheme "user"):
	// whatever precedes the last '@' may be a credential.
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return raw
	}
	prefix := ""
	if i := strings.Index(raw, "://"); i >= 0 && i < at {
		prefix = raw[:i+3]
	}
	return prefix + "xxxxx@" + raw[at+1:]
}

var quotedRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// URLParseError says why url.Parse rejected a URL without quoting any part
// of it: its own messages quote the URL or pieces of it (a bad port, a bad
// escape), which can be pieces of a password when the user info itself is
// malformed.
func URLParseError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ee url.EscapeError
	var he url.InvalidHostError
	switch {
	case errors.As(err, &ee):
		return "invalid percent-escape"
	case errors.As(err, &he):
		return "invalid character in host name"
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "invalid port") {
		return "invalid port after host"
	}
	return quotedRE.ReplaceAllString(msg, `"…"`)
}
