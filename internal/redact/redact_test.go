package redact

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestEmails(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"bare", "admin@example.com", "a***@example.com"},
		{"in json", `{"email":"john.doe+x@sub.example.co.uk"}`, `{"email":"j***@sub.example.co.uk"}`},
		{"several", "a@b.io and zed@c.org", "a***@b.io and z***@c.org"},
		{"none", "order 1799 not found", "order 1799 not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, Emails(tc.in))
		})
	}
}
