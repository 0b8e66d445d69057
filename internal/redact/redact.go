// Package redact masks personal data (email addresses) in text that leaves
// the worker for human eyes: the dashboard's payload view and last-error
// column, dead-letter listings shown on a shared screen.
package redact

import "regexp"

// emailRE is deliberately loose: masking too much is harmless, leaking an
// address is not.
var emailRE = regexp.MustCompile(`([A-Za-z0-9._%+\-'!#$&*/=?^{|}~])[A-Za-z0-9._%+\-'!#$&*/=?^{|}~]*@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*)`)

// Emails replaces the local part of every email address in s, keeping its
// first character: "admin@example.com" becomes "a***@example.com".
func Emails(s string) string {
	return emailRE.ReplaceAllString(s, "${1}***@${2}")
}
