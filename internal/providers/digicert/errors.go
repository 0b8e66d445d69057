package digicert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/httpx"
)

// ErrInvalidRequest is wrapped by errors for requests rejected before
// sending (empty order ID, empty domain or email, duplicate pairs,
// unsupported action). They are Permanent and NotSent.
var ErrInvalidRequest = errors.New("invalid request")

// ErrorItem is one entry of the API's {"errors":[…]} array. Code is the
// machine-readable code, e.g. "not_found|order" or
// "required_param:domain_approval_emails.domain"; Message is prose.
type ErrorItem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error is the error returned by every failed call. It is built in one
// place (checkResponse or the transport-error path) and implements
// providers.DetailedError.
type Error struct {
	// StatusCode is the HTTP status, 0 if no response was read.
	StatusCode int
	// Errors holds every entry of the reply's errors array, in order.
	Errors []ErrorItem
	// Body is the raw reply body (at most 1 MiB), nil when there was none.
	Body []byte
	// Class tells the caller what to do with the failure.
	Class providers.Class
	// RetryAfter is the wait hint of a RateLimited error: the Retry-After
	// header, or the client's default wait when the header is absent.
	RetryAfter time.Duration
	// NotSent is true when the request provably never reached DigiCert.
	NotSent bool
	// Err is the underlying cause (transport error, context error, oversized
	// body, redirect, ErrInvalidRequest), nil for plain API errors.
	Err error
}

// Error returns the provider's words and the class, e.g.
// "digicert: 404 not_found|order: Order not found (permanent)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("digicert: ")
	switch {
	case e.StatusCode == 0:
		if e.NotSent {
			b.WriteString("request not sent")
		} else {
			b.WriteString("request failed")
		}
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	case len(e.Errors) > 0:
		b.WriteString(strconv.Itoa(e.StatusCode))
		b.WriteString(" ")
		for i, it := range e.Errors {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(it.String())
		}
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	default:
		b.WriteString("HTTP ")
		b.WriteString(strconv.Itoa(e.StatusCode))
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	}
	b.WriteString(" (")
	b.WriteString(e.Class.String())
	b.WriteString(")")
	return b.String()
}

// String formats the item as "code: message".
func (it ErrorItem) String() string {
	switch {
	case it.Code == "":
		return it.Message
	case it.Message == "":
		return it.Code
	default:
		return it.Code + ": " + it.Message
	}
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Detail describes the error for the task layer; Code and Message join the
// codes and messages of all entries with "; ".
func (e *Error) Detail() providers.Detail {
	d := providers.Detail{
		Provider:   providers.DigiCert,
		Class:      e.Class,
		StatusCode: e.StatusCode,
		RetryAfter: e.RetryAfter,
		NotSent:    e.NotSent,
	}
	if len(e.Errors) > 0 {
		codes := make([]string, 0, len(e.Errors))
		msgs := make([]string, 0, len(e.Errors))
		for _, it := range e.Errors {
			codes = append(codes, it.Code)
			msgs = append(msgs, it.Message)
		}
		d.Code = strings.Join(codes, "; ")
		d.Message = strings.Join(msgs, "; ")
	} else if e.Err != nil {
		d.Message = e.Err.Error()
	} else if e.StatusCode != 0 {
		d.Message = http.StatusText(e.StatusCode)
	}
	return d
}

// decodeErrors decodes a {"errors":[…]} body. It decodes whenever the body
// (after white space) starts with "{", whatever the Content-Type, and
// reports false when the body is not such a document.
func decodeErrors(body []byte) ([]ErrorItem, bool) {
	trimmed := bytes.TrimLeft(body, " \t\r\n\ufeff")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false
	}
	var doc struct {
		Errors []json.RawMessage `json:"errors"`
	}
	if err := json.Unmarshal(trimmed, &doc); err != nil || len(doc.Errors) == 0 {
		return nil, false
	}
	items := make([]ErrorItem, 0, len(doc.Errors))
	for _, raw := range doc.Errors {
		// Be lenient per entry: a non-string field loses only that field.
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil {
			continue
		}
		it := ErrorItem{Code: jsonString(fields["code"]), Message: jsonString(fields["message"])}
		if it == (ErrorItem{}) {
			continue
		}
		items = append(items, it)
	}
	if len(items) == 0 {
		return nil, false
	}
	return items, true
}

func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// classify maps an HTTP status and the decoded errors to a class
// (docs/digicert.md §4).
func classify(status int, items []ErrorItem) providers.Class {
	switch {
	case status >= 200 && status < 300:
		return providers.Success
	case status >= 300 && status < 400:
		return providers.Configuration
	case status == http.StatusTooManyRequests:
		return providers.RateLimited
	case status == http.StatusRequestTimeout, status >= 500:
		return providers.Transient
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return providers.Configuration
	case status == http.StatusNotFound:
		// not_found|order is the only 404 that names a missing resource;
		// not_found|route, or a 404 without DigiCert's error body, means the
		// base URL or path is wrong.
		for _, it := range items {
			if base, qual := splitCode(it.Code); base == "not_found" && qual != "route" && qual != "" {
				return providers.Permanent
			}
		}
		return providers.Configuration
	case status >= 400:
		return providers.Permanent
	default:
		return providers.Transient
	}
}

// splitCode splits "base|qualifier" or "base:field" into its base and the
// rest, first on "|", then on ":".
func splitCode(code string) (base, rest string) {
	if i := strings.IndexByte(code, '|'); i >= 0 {
		return code[:i], code[i+1:]
	}
	if i := strings.IndexByte(code, ':'); i >= 0 {
		return code[:i], code[i+1:]
	}
	return code, ""
}

// transportError classifies a call that got no reply. The layer decided
// NotSent; DigiCert's part is the class: a rejected certificate or a request
// that cannot be built is configuration, anything else transient.
func transportError(he *httpx.Error, timeout time.Duration) *Error {
	e := &Error{Class: providers.Transient, NotSent: he.NotSent, Err: he.Err}
	if he.Build || he.TLSVerify() {
		e.Class = providers.Configuration
	}
	if cerr := he.Canceled; cerr != nil {
		// The caller gave up: keep ctx.Err() in the chain for errors.Is.
		if !errors.Is(e.Err, cerr) {
			e.Err = fmt.Errorf("%w: %w", cerr, e.Err)
		}
	} else if he.TimedOut {
		e.Err = fmt.Errorf("timed out after %s: %w", timeout, e.Err)
	}
	return e
}
