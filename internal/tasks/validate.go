package tasks

import (
	"fmt"
	"net/mail"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// FieldError is a validation failure of one payload field. Its message names
// the field first so that CLIs can print it as a one-line diagnosis.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

var (
	orderIDRE = regexp.MustCompile(`^[0-9]{1,20}$`)
	localeRE  = regexp.MustCompile(`^[a-z]{2}(_[A-Z]{2})?$`)
	// producerRE is a producer (API token) name: short, no spaces, safe in
	// logs and metrics labels.
	producerRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	labelRE    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

// Input limits, part of the task contract (README "Limits").
const (
	// MaxReferenceLen is the longest reference accepted, in characters.
	MaxReferenceLen = 128
	// MaxApprovalEmails bounds domain_approval_emails. DigiCert documents
	// no maximum; 100 is well above the domains of an ordinary order and
	// keeps one task (one provider call that must succeed or fail as a
	// whole) from carrying thousands of recipients. Larger orders are
	// split into several tasks.
	MaxApprovalEmails = 100
	// MaxEmailLen is RFC 5321's limit on an address (a 254-octet path).
	MaxEmailLen = 254
	// MaxPayloadBytes bounds a task's encoded payload. The largest payload
	// the field limits allow is about 54 KB (100 entries of a 253-character
	// domain and a 254-character address, plus a 128-character reference);
	// 64 KiB admits it with room for JSON escapes, while keeping one task
	// from putting megabytes into Redis, which holds every task in memory
	// (noeviction), copies its message on each state change, and shows it in
	// the dashboard.
	MaxPayloadBytes = 64 << 10
)

// validatePayloadSize rejects an encoded payload over MaxPayloadBytes.
func validatePayloadSize(b []byte) error {
	if len(b) > MaxPayloadBytes {
		return fieldErr("payload", "must be at most %d bytes encoded, got %d", MaxPayloadBytes, len(b))
	}
	return nil
}

// validateApprovalCount rejects more than MaxApprovalEmails entries.
func validateApprovalCount(n int) error {
	if n > MaxApprovalEmails {
		return fieldErr("domain_approval_emails", "must have at most %d entries, got %d", MaxApprovalEmails, n)
	}
	return nil
}

func validateOrderID(s string) error {
	if s == "" {
		return fieldErr("order_id", "is required")
	}
	if !orderIDRE.MatchString(s) {
		return fieldErr("order_id", "must be 1-20 ASCII digits, got %q", truncate(s))
	}
	return nil
}

func validateReference(s string) error {
	if !utf8.ValidString(s) {
		return fieldErr("reference", "must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(s); n > MaxReferenceLen {
		return fieldErr("reference", "must be at most %d characters, got %d", MaxReferenceLen, n)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fieldErr("reference", "must be printable characters only, found %U", r)
		}
	}
	return nil
}

// ValidateProducer checks a producer name (an API token's name): 1-64
// characters of A-Z a-z 0-9 . _ -, starting with a letter or digit.
func ValidateProducer(s string) error {
	if !producerRE.MatchString(s) {
		return fieldErr("producer", "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit, got %q", truncate(s))
	}
	return nil
}

func validateProducer(s string) error {
	if s == "" {
		return nil
	}
	return ValidateProducer(s)
}

func validateEmail(field, s string) error {
	if s == "" {
		return fieldErr(field, "is required")
	}
	if len(s) > MaxEmailLen {
		return fieldErr(field, "must be at most %d characters, got %d", MaxEmailLen, len(s))
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return fieldErr(field, "must be a bare email address like admin@example.com")
	}
	at := strings.LastIndexByte(s, '@')
	if validateDomain(field, s[at+1:]) != nil {
		return fieldErr(field, "must be a bare email address with a valid domain")
	}
	return nil
}

func validateDomain(field, s string) error {
	if s == "" {
		return fieldErr(field, "is required")
	}
	if len(s) > 253 {
		return fieldErr(field, "must be at most 253 characters")
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return fieldErr(field, "must be a fully qualified hostname like example.com, got %q", truncate(s))
	}
	for _, l := range labels {
		if !labelRE.MatchString(l) {
			return fieldErr(field, "must be a valid hostname like example.com, got %q", truncate(s))
		}
	}
	return nil
}

func validateLocale(s string) error {
	if s != "" && !localeRE.MatchString(s) {
		return fieldErr("locale", "must look like en or pt_BR, got %q", truncate(s))
	}
	return nil
}

// truncate keeps error messages one short line whatever the input.
func truncate(s string) string {
	const max = 40
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max]) + "…"
}
