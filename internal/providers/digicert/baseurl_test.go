package digicert_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/digicert"
)

// TestBaseURLErrorHidesPassword: url.Parse errors quote the whole URL, so a
// DIGICERT_URL with user info that fails to parse used to print its password.
func TestBaseURLErrorHidesPassword(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, url string }{
		{"BadPort", "https://user:s3cretPW@api.example.com:44x/"},
		{"BadEscape", "https://user:s3cret%zzPW@api.example.com/"},
		{"SpaceInHost", "https://user:s3cretPW@api.exa mple.com/"},
		{"SlashInPassword", "https://user:s3cret/PW@api.example.com/"},
		{"ControlCharacter", "https://user:s3cretPW\x7f@api.example.com/"},
		{"NoScheme", "user:s3cretPW@api.example.com/"},
		{"Parses", "https://user:s3cretPW@api.example.com/"},
		{"UserOnly", "https://s3cretPW@api.example.com/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := digicert.New(digicert.WithAPIKey("ABCDEF0123456789"), digicert.WithBaseURL(tc.url))
			require.Error(t, err)
			require.NotContains(t, err.Error(), "s3cret")
			require.NotContains(t, err.Error(), "PW@")
		})
	}
}
