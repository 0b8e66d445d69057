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
	"strings"
	"unicode"
	"unicode/utf8"
)

// atLen returns the length of the at sign spelled at s[i:], 0 if there is
// none: '@', U+FF20, U+FE6B, \u0040 (any number of backslashes, u or U,
// leading zeros optional), \x40, %40 (also %2540...), &#64; &#064; &#x40;
// (semicolon optional) and &commat; (any case). Hand-written because the
// equivalent regexp made Emails about 35 times slower (23 µs against 0.6 µs
// for a 210-byte payload), and it runs on every log attribute.
func atLen(s string, i int) int {
	j := i
	switch s[i] {
	case '@':
		return 1
	case 0xEF:
		if strings.HasPrefix(s[i:], "\uFF20") || strings.HasPrefix(s[i:], "\uFE6B") {
			return 3
		}
	case '\\':
		for j < len(s) && s[j] == '\\' {
			j++
		}
		if j < len(s) && (s[j] == 'u' || s[j] == 'U') {
			j = zeros(s, j+1)
		} else if j < len(s) && (s[j] == 'x' || s[j] == 'X') {
			j++
		} else {
			return 0
		}
		if strings.HasPrefix(s[j:], "40") {
			return j + 2 - i
		}
	case '%':
		j++
		for strings.HasPrefix(s[j:], "25") {
			j += 2
		}
		if strings.HasPrefix(s[j:], "40") {
			return j + 2 - i
		}
	case '&':
		if len(s)-i >= len("&commat;") && strings.EqualFold(s[i:i+len("&commat;")], "&commat;") {
			return len("&commat;")
		}
		if !strings.HasPrefix(s[i:], "&#") {
			return 0
		}
		j += 2
		want := "64"
		if j < len(s) && (s[j] == 'x' || s[j] == 'X') {
			j++
			want = "40"
		}
		j = zeros(s, j)
		if !strings.HasPrefix(s[j:], want) {
			return 0
		}
		j += 2
		if j < len(s) && s[j] == ';' {
			j++
		}
		return j - i
	}
	return 0
}

func zeros(s string, j int) int {
	for j < len(s) && s[j] == '0' {
		j++
	}
	return j
}

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
	// spans are byte ranges replaced by "***", kept sorted and disjoint.
	var spans [][2]int
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '@', '\\', '%', '&', 0xEF:
		default:
			continue
		}
		size := atLen(s, i)
		if size == 0 {
			continue
		}
		l := [2]int{i, i + size}
		i += size - 1
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
