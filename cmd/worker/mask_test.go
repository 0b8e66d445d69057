package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestLoggerMasksEmails: every log line of the worker is masked in one
// place (its logger), whichever call site logs an address.
func TestLoggerMasksEmails(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := newLogger(&buf, "info")
	log.With("reference", "for jörg.müller@example.com").Warn("resend to admin@example.com failed",
		"error", errors.New(`provider said: {"email":"bob\u0040example.com"}`), "order_id", "1799")
	out := buf.String()
	for _, leak := range []string{"rg.m", "ller", "dmin", `bob\u0040`} {
		require.NotContains(t, out, leak)
	}
	require.Contains(t, out, `"msg":"resend to a***@example.com failed"`)
	require.Contains(t, out, `"reference":"for j***@example.com"`)
	require.Contains(t, out, `"order_id":"1799"`)
}

// TestProviderURLErrorHidesPassword: a provider URL with user info that
// does not parse is reported (exit 2, one line) without its password.
func TestProviderURLErrorHidesPassword(t *testing.T) {
	t.Parallel()
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		tests := []struct {
			name string
			env  map[string]string
			want string
		}{
			{"digicert bad port", map[string]string{"DIGICERT_API_KEY": "k", "DIGICERT_URL": "https://user:s3cretPW@www.digicert.com:44x/services/v2/"}, "DIGICERT_URL"},
			{"digicert bad escape", map[string]string{"DIGICERT_API_KEY": "k", "DIGICERT_URL": "https://user:s3cret%zzPW@www.digicert.com/services/v2/"}, "DIGICERT_URL"},
			{"opensrs bad port", map[string]string{"OPENSRS_USERNAME": "u", "OPENSRS_API_KEY": "k", "OPENSRS_URL": "https://user:s3cretPW@rr-n1-tor.opensrs.net:5x/"}, "OPENSRS_URL"},
			{"opensrs slash in password", map[string]string{"OPENSRS_USERNAME": "u", "OPENSRS_API_KEY": "k", "OPENSRS_URL": "https://user:s3cret/PW@rr-n1-tor.opensrs.net/"}, "OPENSRS_URL"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				tc.env["REDIS_URL"] = b.URL
				var stdout, stderr bytes.Buffer
				code := run(t.Context(), []string{"--http-addr", "off"}, &stdout, &stderr, envOf(tc.env))
				require.Equal(t, exitUsage, code, stderr.String())
				last := lastLine(stderr.String())
				require.Contains(t, last, tc.want)
				require.Contains(t, last, "invalid base URL")
				require.NotContains(t, stderr.String(), "s3cret")
				require.NotContains(t, stdout.String(), "s3cret")
				require.False(t, strings.Contains(stderr.String(), "PW@"))
			})
		}
	})
}
