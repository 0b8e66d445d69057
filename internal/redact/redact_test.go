package redact

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestEmails(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"bare", "admin@example.com", "a***@example.com"},
		{"in json", `{"email":"john.doe+x@sub.example.co.uk"}`, `{"email":"j***@sub.example.co.uk"}`},
		{"several", "a@b.io and zed@c.org", "a***@b.io and z***@c.org"},
		{"one-letter local part", "x@example.com", "x***@example.com"},
		{"no dot in domain", "root@localhost", "r***@localhost"},
		{"ip literal", "admin@[192.0.2.1]", "a***@[192.0.2.1]"},
		{"in angle brackets", "To: Jörg <joerg@example.com>", "To: Jörg <j***@example.com>"},

		// Unicode local parts and domains: the whole local part is masked.
		{"non-ascii local part", "jörg.müller@example.com", "j***@example.com"},
		{"non-ascii first letter", "ólafur@example.is", "ó***@example.is"},
		{"cyrillic", "почта: иван.петров@пример.рф", "почта: и***@пример.рф"},
		{"cjk", "用户@例子.广告", "用***@例子.广告"},
		{"idn domain", "admin@müller.de", "a***@müller.de"},
		{"punycode domain", "admin@xn--mller-kva.de", "a***@xn--mller-kva.de"},
		{"combining mark", "jo\u0308rg@example.com", "j***@example.com"},

		// Escaped at signs.
		{"json \\u0040", `{"email":"admin\u0040example.com"}`, `{"email":"a***\u0040example.com"}`},
		{"json \\U0040", `admin\U0040example.com`, `a***\U0040example.com`},
		{"double-escaped \\\\u0040", `"{\"e\":\"admin\\u0040example.com\"}"`, `"{\"e\":\"a***\\u0040example.com\"}"`},
		{"json escapes in local part", `"j\u00f6rg.m\u00fcller\u0040example.com"`, `"j***\u0040example.com"`},
		{"json escaped domain", `admin@\u00fcber.de`, `a***@\u00fcber.de`},
		{"c \\x40", `admin\x40example.com`, `a***\x40example.com`},
		{"percent %40", "mailto=admin%40example.com", "m***%40example.com"},
		{"percent in query (greedy: / ? = are atext)", "https://x.test/?e=admin%40example.com&y=1", "https:/***%40example.com&y=1"},
		{"double percent %2540", "admin%2540example.com", "a***%2540example.com"},
		{"percent-encoded local part", "j%C3%B6rg%40example.com", "j***%40example.com"},
		{"triple percent %252540", "admin%252540example.com", "a***%252540example.com"},
		{"many backslashes", `admin\\\u0040example.com`, `a***\\\u0040example.com`},
		{"short \\u40", `admin\u40example.com`, `a***\u40example.com`},
		{"html &#x0040;", "admin&#x0040;example.com", "a***&#x0040;example.com"},
		{"html &COMMAT;", "admin&COMMAT;example.com", "a***&COMMAT;example.com"},
		{"html &#64;", "admin&#64;example.com", "a***&#64;example.com"},
		{"html &#064;", "admin&#064;example.com", "a***&#064;example.com"},
		{"html &#x40;", "admin&#x40;example.com", "a***&#x40;example.com"},
		{"html &#X40; no semicolon", "admin&#X40example.com", "a***&#X40example.com"},
		{"html &commat;", "admin&commat;example.com", "a***&commat;example.com"},
		{"html entity in local part", "j&ouml;rg&#64;example.com", "j***&#64;example.com"},
		{"html escapes around", `\u003cadmin@example.com\u003e`, `\***@example.com\u003e`},
		{"full-width at", "admin＠example.com", "a***＠example.com"},
		{"small at", "admin﹫example.com", "a***﹫example.com"},
		{"address as domain of another", "foo@admin@example.com", "f***@a***@example.com"},
		{"escaped at inside local part", "a%40b@example.com", "a***@example.com"},

		// Idempotent.
		{"already masked", "a***@example.com", "a***@example.com"},

		// None.
		{"none", "order 1799 not found", "order 1799 not found"},
		{"empty", "", ""},
		{"mention", "ping @mention please", "ping @mention please"},
		{"at at end", "x@", "x@"},
		{"at then space", "meet me @ 10:00", "meet me @ 10:00"},
		{"at then punctuation", "a@.", "a@."},
		{"percent", "100% done, 40% left", "100% done, 40% left"},
		{"entity", "Tom &amp; Jerry &#65;", "Tom &amp; Jerry &#65;"},
		{"near misses", `a%4 b%25 c\u004 d&#6 e&#x4 f&comma; g\x4`, `a%4 b%25 c\u004 d&#6 e&#x4 f&comma; g\x4`},
		{"escapes at end", `a\ b% c& d\u00`, `a\ b% c& d\u00`},
		{"invalid utf-8", "\xef\xbc admin\xff@example.com \xef", "\xef\xbc a***@example.com \xef"},
		{"error text", `opensrs: 415 Authentication failed (permanent)`, `opensrs: 415 Authentication failed (permanent)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, Emails(tc.in))
		})
	}
}

func TestJSON(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"escaped at", `{"email":"admin\u0040example.com"}`, `{"email":"a***@example.com"}`},
		{"escaped letters", `{"email":"j\u00f6rg.m\u00fcller@example.com"}`, `{"email":"j***@example.com"}`},
		{"escaped angle brackets", `{"to":"\u003cadmin\u0040example.com\u003e"}`, `{"to":"<a***@example.com>"}`},
		{"key", `{"admin@example.com":1}`, `{"a***@example.com":1}`},
		{"nested and arrays", `{"a":[{"email":"bob@example.com"},"x",1.50,true,null]}`, `{"a":[{"email":"b***@example.com"},"x",1.50,true,null]}`},
		{"json in a string", `{"raw":"{\"e\":\"admin\\u0040example.com\"}"}`, `{"raw":"{\"e\":\"a***\\u0040example.com\"}"}`},
		{"key order and numbers kept", `{"z":1,"a":12345678901234567890,"m":"x"}`, `{"z":1,"a":12345678901234567890,"m":"x"}`},
		{"whitespace dropped", "{ \"order_id\" : \"1799\" }\n", `{"order_id":"1799"}`},
		{"scalar string", `"admin@example.com"`, `"a***@example.com"`},
		{"invalid json falls back to text", `{"email":"admin@example.com"`, `{"email":"a***@example.com"`},
		{"trailing data falls back to text", `{} admin\u0040example.com`, `{} a***\u0040example.com`},
		{"empty", ``, ``},
		{"none", `{"order_id":"1799","reference":"ticket-42"}`, `{"order_id":"1799","reference":"ticket-42"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, string(JSON([]byte(tc.in))))
		})
	}
}

func TestJSONDeep(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat("[", 10000) + `"admin\u0040example.com"` + strings.Repeat("]", 10000)
	out := string(JSON([]byte(deep)))
	require.NotContains(t, out, "admin")
	require.Contains(t, out, `a***\u0040example.com`)
}

func TestHandler(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewJSONHandler(&buf, nil)))
	type payload struct {
		Email string `json:"email"`
	}
	log.With("ref", "jörg@example.com").WithGroup("g").Info("mail to admin@example.com failed",
		"error", errors.New("bad: bob@example.com"),
		"payload", payload{"carol\u0040example.com"},
		"raw", json.RawMessage(`{"e":"dave\u0040example.com"}`),
		slog.Group("inner", "email", "erin@example.com"),
		"url", &url.URL{Scheme: "mailto", Opaque: "frank@example.com"},
		"n", 1799,
		"bytes", []byte("grace@example.com"),
	)
	out := buf.String()
	for _, local := range []string{"örg", "dmin", "ob@", "arol", "ave", "rin", "rank", "race", "Z3JhY2"} {
		require.NotContains(t, out, local)
	}
	var rec map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &rec), out)
	require.Equal(t, "mail to a***@example.com failed", rec["msg"])
	require.Equal(t, "j***@example.com", rec["ref"])
	g := rec["g"].(map[string]any)
	require.Equal(t, "bad: b***@example.com", g["error"])
	require.Equal(t, map[string]any{"email": "c***@example.com"}, g["payload"])
	require.Equal(t, map[string]any{"email": "e***@example.com"}, g["inner"])
	require.Equal(t, float64(1799), g["n"])
	require.Equal(t, "g***@example.com", g["bytes"])

	buf.Reset()
	slog.New(NewHandler(slog.NewTextHandler(&buf, nil))).Info("x", "payload", payload{"carol@example.com"})
	require.Contains(t, buf.String(), `payload="{\"email\":\"c***@example.com\"}"`)
}

func TestWriter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	// An address split over writes is masked all the same.
	for _, s := range []string{"to: ad", "min@exa", "mple.com\nnext: jörg", "@example.com"} {
		n, err := w.Write([]byte(s))
		require.NoError(t, err)
		require.Equal(t, len(s), n)
	}
	require.Equal(t, "to: a***@example.com\n", buf.String())
	require.NoError(t, w.Flush())
	require.Equal(t, "to: a***@example.com\nnext: j***@example.com", buf.String())
}

func TestURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"user and password", "https://user:s3cret@api.example.com/v2/", "https://xxxxx@api.example.com/v2/"},
		{"no user info", "https://api.example.com/v2/", "https://api.example.com/v2/"},
		{"bad port", "https://user:s3cret@api.example.com:x/", "https://xxxxx@api.example.com:x/"},
		{"bad escape", "https://user:s3%zzcret@api.example.com/", "https://xxxxx@api.example.com/"},
		{"opaque", "user:s3cret@api.example.com/", "xxxxx@api.example.com/"},
		{"password with slash", "https://user:s3/cret@api.example.com/", "https://xxxxx@api.example.com/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, URL(tc.in))
		})
	}
}

func TestURLParseError(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"https://user:s3cret@api.example.com:bad/",
		"https://user:s3%zzcret@api.example.com/",
		"https://user:s3cret@api.exa mple.com/",
		"https://user:s3/cret@api.example.com/",
		"https://user:s3cret:@api.example.com:99999x/",
		"https://user:s3cret\x7f@api.example.com/",
		"https://[user:s3cret@api.example.com/",
	} {
		t.Run(raw, func(t *testing.T) {
			t.Parallel()
			_, err := url.Parse(raw)
			require.Error(t, err)
			msg := URLParseError(err)
			require.NotEmpty(t, msg)
			require.NotContains(t, msg, "s3")
			require.NotContains(t, msg, "cret")
			require.NotContains(t, URL(raw), "cret")
		})
	}
}

// atForms spell "@" the ways Emails must recognise.
var atForms = []string{"@", `\u0040`, `\\u0040`, `\U0040`, `\x40`, "%40", "%2540", "&#64;", "&#064;", "&#x40;", "&#X40", "&commat;", "＠", "﹫"}

// FuzzEmails: the output never contains the local part of an address in
// the input beyond its first rune, whatever surrounds the address and
// however its at sign is spelled; and JSON never leaks it either when the
// address is a JSON string (escaped or not).
func FuzzEmails(f *testing.F) {
	f.Add("", "jörg.müller", "example.com", "", uint8(0))
	f.Add(`{"email":"`, "admin", "example.com", `"}`, uint8(1))
	f.Add("foo@", "admin", "example.com", "", uint8(0))
	f.Add("x%4", "0admin", "example.com", "", uint8(5))
	f.Add("to=", "a.b+c", "müller.de", " and more", uint8(8))
	f.Fuzz(func(t *testing.T, prefix, local, domain, suffix string, form uint8) {
		if !utf8.ValidString(prefix + local + domain + suffix) {
			return
		}
		first, n := utf8.DecodeRuneInString(local)
		tail := local[n:]
		if first == utf8.RuneError || utf8.RuneCountInString(tail) < 3 || !startsDomain(domain+suffix) || strings.Contains(tail, "*") {
			return
		}
		for _, r := range local {
			if !isLocal(r) {
				return
			}
		}
		if strings.HasSuffix(local, `\`) {
			return // its backslashes join an escaped at sign (\\u0040), which is shown
		}
		at := atForms[int(form)%len(atForms)]
		in := prefix + local + at + domain + suffix
		// The tail may legitimately appear elsewhere in the input (masking
		// only ever inserts "***", so it cannot create a new occurrence).
		if strings.Count(in, tail) != 1 {
			return
		}
		out := Emails(in)
		if strings.Contains(out, tail) {
			t.Fatalf("Emails(%q) = %q leaks %q", in, out, tail)
		}

		// As a JSON string value (json.Marshal escapes nothing relevant;
		// the \u escapes are what other encoders produce).
		addr := local + "@" + domain
		if !startsDomain(domain) || strings.Count(addr, tail) != 1 {
			return
		}
		for _, doc := range [][]byte{mustJSON(t, map[string]string{"e": addr}), []byte(`{"e":"` + jsonEscapeAll(addr) + `"}`)} {
			got := JSON(doc)
			var dec map[string]string
			if err := json.Unmarshal(got, &dec); err != nil {
				t.Fatalf("JSON(%s) = %s: not JSON: %v", doc, got, err)
			}
			if strings.Contains(dec["e"], tail) {
				t.Fatalf("JSON(%s) = %s leaks %q", doc, got, tail)
			}
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// jsonEscapeAll writes every rune of s as \uXXXX (surrogate pairs beyond
// the BMP), the most escaped spelling a JSON encoder may produce.
func jsonEscapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0xFFFF {
			r1, r2 := utf16Surrogates(r)
			b.WriteString(hex4(r1) + hex4(r2))
			continue
		}
		b.WriteString(hex4(r))
	}
	return b.String()
}

func utf16Surrogates(r rune) (rune, rune) {
	r -= 0x10000
	return 0xD800 + (r>>10)&0x3FF, 0xDC00 + r&0x3FF
}

func hex4(r rune) string {
	const digits = "0123456789abcdef"
	return `\u` + string([]byte{digits[r>>12&0xF], digits[r>>8&0xF], digits[r>>4&0xF], digits[r&0xF]})
}

var benchPayload = []byte(`{"order_id":"12345","domain_approval_emails":[{"domain":"example.com","email":"j\u00f6rg.m\u00fcller\u0040example.com"},{"domain":"example.org","email":"admin@example.org"}],"locale":"en","reference":"ticket-42"}`)

func BenchmarkEmails(b *testing.B) {
	s := string(benchPayload)
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		_ = Emails(s)
	}
}

func BenchmarkEmailsNoAddress(b *testing.B) {
	s := "digicert: 404 not_found|order: Order not found (permanent)"
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		_ = Emails(s)
	}
}

func BenchmarkJSON(b *testing.B) {
	b.SetBytes(int64(len(benchPayload)))
	for b.Loop() {
		_ = JSON(benchPayload)
	}
}
