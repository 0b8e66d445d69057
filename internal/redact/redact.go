// Package redact masks personal data (email addresses) and credentials in
// everything that leaves certmail for human eyes or for storage outside the
// task payload: logs, errors handed to asynq, CLI output, the dashboard,
// stored provider messages and references.
//
// One function decides what an address is (Emails); the others apply it to
// JSON values (JSON), log records (NewHandler), streams of lines (NewWriter)
// and URLs in error messages (URL, URLParseError). The stored task payload
// is never masked: replay needs the real addresses.
//
// What is masked: every local part in front of an at sign, whatever its
// script (jörg.müller@… becomes j***@…), keeping only its first character;
// the at sign may be spelled '@', a JSON or C escape (\u0040, \\u0040,
// \x40), percent-encoded (%40, %2540), an HTML reference (&#64;, &#x40;,
// &commat;) or a full-width/small at sign. The domain is kept (it helps
// debugging and identifies no one). An at sign needs something in front of
// it and a domain-like character after it, so "@mention", "x@" and plain
// text such as "order 1799" are left alone; "user@localhost" is masked (a
// dot in the domain is not required). Masking is deliberately greedy:
// "to=admin@example.com" becomes "t***@example.com", since masking too much
// is harmless and leaking an address is not. Not handled: quoted local parts
// with spaces ("john doe"@example.com) and prose spellings ("admin at
// example dot com").
package redact

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// atRE matches an at sign in any of the spellings the package knows.
var atRE = regexp.MustCompile(`(?i)@|\x{FF20}|\x{FE6B}|\\+u0*40|\\+x40|%(?:25)*40|&#0*64;?|&#x0*40;?|&commat;`)

// localPunct are the ASCII characters taken as part of a local part besides
// letters and digits: RFC 5322 atext, plus '\\' and ';' so that an escaped
// character inside the local part (j\u00f6rg, j&ouml;rg) does not end it.
const localPunct = ".!#$%&'*+-/=?^_`{|}~\\;"

func isLocal(r rune) bool {
	if r < utf8.RuneSelf {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune(localPunct, r)
	}
	// RFC 6531 allows any non-ASCII character in a local part; only spaces
	// and the other at signs end one.
	return !unicode.IsSpace(r) && r != '\uFF20' && r != '\uFE6B'
}

// startsDomain reports whether s starts like a domain: a letter or digit of
// any script, an IP literal, or an escaped character.
func startsDomain(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	switch {
	case s == "":
		return false
	case r < utf8.RuneSelf:
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune(`[\%&`, r)
	default:
		return !unicode.IsSpace(r) && !unicode.IsPunct(r)
	}
}

// Emails replaces the local part of every email address in s but its first
// character with "***": "admin@example.com" becomes "a***@example.com",
// "jörg.müller@example.com" becomes "j***@example.com". See the package
// documentation for what counts as an address.
func Emails(s string) string {
	locs := atRE.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	// spans are byte ranges replaced by "***", kept sorted and disjoint.
	var spans [][2]int
	for _, l := range locs {
		if !startsDomain(s[l[1]:]) {
			continue
		}
		start := l[0]
		for start > 0 {
			r, n := utf8.DecodeLastRuneInString(s[:start])
			if !isLocal(r) {
				break
			}
			start -= n
		}
		if start == l[0] {
			continue // "@mention"
		}
		_, n := utf8.DecodeRuneInString(s[start:])
		span := [2]int{start + n, l[0]}
		// A local part may run through an earlier (escaped) at sign and
		// its local part: merge what overlaps.
		for len(spans) > 0 && spans[len(spans)-1][1] > span[0] || len(spans) > 0 && spans[len(spans)-1][0] >= span[0] {
			span[0] = min(span[0], spans[len(spans)-1][0])
			spans = spans[:len(spans)-1]
		}
		spans = append(spans, span)
	}
	if spans == nil {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	prev := 0
	for _, sp := range spans {
		b.WriteString(s[prev:sp[0]])
		b.WriteString("***")
		prev = sp[1]
	}
	b.WriteString(s[prev:])
	return b.String()
}
