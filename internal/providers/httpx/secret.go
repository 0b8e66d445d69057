package httpx

import (
	"fmt"
	"io"
	"strings"
)

// Redacted is what a Secret prints as.
const Redacted = "[redacted]"

// Secret holds an API key. Every formatting path prints Redacted, so the key
// cannot leak through logs, errors or %v/%+v/%#v of a value holding it; only
// Reveal, called where the key goes on the wire, returns it.
type Secret string

func (Secret) String() string               { return Redacted }
func (Secret) GoString() string             { return Redacted }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, Redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// Reveal returns the key itself, for the request that carries it.
func (s Secret) Reveal() string { return string(s) }

// Scrub replaces every occurrence of the key in text: a hostile or broken
// server may echo it back, and its words end up in errors and logs.
func (s Secret) Scrub(text string) string {
	if s == "" {
		return text
	}
	return strings.ReplaceAll(text, string(s), Redacted)
}
