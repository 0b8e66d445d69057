package opensrs

import (
	"fmt"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/providers"
)

// AllowListHint is appended to configuration errors caused by the caller's IP
// address not being on the OpenSRS API allow list.
const AllowListHint = "check the OpenSRS API IP allow list (Reseller Control Panel → Account settings → API settings → IP access rules); changes take up to 15 minutes"

const credentialsHint = "check the reseller username and API key (live and Horizon keys differ; a new key invalidates the old one)"

// APIError is the error of every failed call. Callers use errors.As to get
// it, or providers.Describe / providers.Classify, as it implements
// providers.DetailedError.
type APIError struct {
	// StatusCode is the HTTP status; 0 when no response was read.
	StatusCode int
	// Code and Message are the OPS response_code and response_text (with
	// error_details appended), or for failures without an OPS reply a
	// description in the client's words.
	Code    string
	Message string
	// Class says whether to retry.
	Class providers.Class
	// RetryAfter is the HTTP Retry-After hint of a rate-limited reply, if any.
	RetryAfter time.Duration
	// NotSent is true only when the request provably never reached OpenSRS.
	NotSent bool
	// Err is the underlying error (transport, context, decoding), if any.
	Err error
}

// Error returns e.g. "opensrs: 480 Item not found (permanent)",
// "opensrs: HTTP 503 (transient)" or
// "opensrs: request not sent: dial tcp …: connection refused (transient)".
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("opensrs: ")
	switch {
	case e.Code != "":
		b.WriteString(e.Code)
		if e.Message != "" {
			b.WriteString(" " + e.Message)
		}
	case e.StatusCode != 0:
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
		if e.Message != "" {
			b.WriteString(": " + e.Message)
		}
	default:
		b.WriteString(e.Message)
	}
	b.WriteString(" (" + e.Class.String() + ")")
	return b.String()
}

// Unwrap returns the underlying error.
func (e *APIError) Unwrap() error { return e.Err }

// Detail describes the error for the task layer.
func (e *APIError) Detail() providers.Detail {
	return providers.Detail{
		Provider:   providers.OpenSRS,
		Class:      e.Class,
		StatusCode: e.StatusCode,
		Code:       e.Code,
		Message:    e.Message,
		RetryAfter: e.RetryAfter,
		NotSent:    e.NotSent,
	}
}

var _ providers.DetailedError = (*APIError)(nil)

// ClassifyCode maps an OPS response_code of a reply with is_success=0 and
// its response_text to a class (docs/opensrs.md §6).
func ClassifyCode(code, text string) providers.Class {
	switch strings.TrimSpace(code) {
	case "300", "310":
		return providers.RateLimited
	case "350", "404", "437", "486", "705":
		return providers.Transient
	case "401", "410", "435":
		return providers.Configuration
	case "400":
		t := strings.ToLower(text)
		switch {
		case strings.Contains(t, "invalid ip address") || strings.HasPrefix(t, "access denied"):
			return providers.Configuration
		case strings.Contains(t, "invalid command"):
			return providers.Permanent
		case strings.Contains(t, "internal server error") || strings.Contains(t, "retry"):
			return providers.Transient
		}
		return providers.Permanent
	default:
		// 415, 430, 440, 445, 447, 460, 465, 480, 485, 487 and every
		// undocumented code; 200/250 only reach here with is_success=0,
		// which contradicts itself and is not retried either.
		return providers.Permanent
	}
}

// hintFor returns operator guidance for configuration codes.
func hintFor(code, text string) string {
	switch strings.TrimSpace(code) {
	case "401", "410":
		return credentialsHint
	case "435":
		return "check the reseller account's API permissions"
	case "400":
		if ClassifyCode(code, text) == providers.Configuration {
			return AllowListHint
		}
	}
	return ""
}
