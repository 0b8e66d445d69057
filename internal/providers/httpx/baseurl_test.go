package httpx_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/httpx"
)

// TestParseBaseURL is the one table for base URLs of every provider; each
// client only checks that it uses it.
func TestParseBaseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url string
		wantErr   string // "" means valid
	}{
		{"HTTPS", "https://www.digicert.com/services/v2/", ""},
		{"HTTPSPort", "https://rr-n1-tor.opensrs.net:55443/", ""},
		{"LoopbackHTTP", "http://127.0.0.1:8080/xcp/", ""},
		{"LocalhostHTTP", "http://localhost:8080/", ""},
		{"IPv6LoopbackHTTP", "http://[::1]:8080/", ""},
		{"PlainHTTPRemote", "http://rr-n1-tor.opensrs.net:55443/", "must use https (http only for loopback hosts)"},
		{"FTP", "ftp://example.com/", "must use https"},
		{"NoTrailingSlash", "https://rr-n1-tor.opensrs.net:55443", `must end in "/"`},
		{"NoTrailingSlashPath", "https://www.digicert.com/services/v2", "slash"},
		{"Relative", "/services/v2/", "not absolute"},
		{"Opaque", "https:example.com/", "not absolute"},
		{"NoHost", "https:///v2/", "not absolute"},
		{"Query", "https://example.com/v2/?a=b", "query or fragment"},
		{"EmptyQuery", "https://example.com/v2/?", "query or fragment"},
		{"Fragment", "https://example.com/v2/#x", "query or fragment"},
		{"UserInfo", "https://u:pw@example.com/", "must not contain credentials (user info)"},
		{"Unparsable", "https://exa mple.com/\x7f", "invalid base URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := httpx.ParseBaseURL(tc.url)
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, tc.url, u.String())
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, u)
		})
	}
}

// TestParseBaseURLHidesPassword: url.Parse errors quote the whole URL, so a
// base URL with user info that fails to parse used to print its password.
func TestParseBaseURLHidesPassword(t *testing.T) {
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
			_, err := httpx.ParseBaseURL(tc.url)
			require.Error(t, err)
			require.NotContains(t, err.Error(), "s3cret")
			require.NotContains(t, err.Error(), "PW@")
		})
	}
}

func TestIsLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host string
		want bool
	}{
		{"localhost", true},
		{"LocalHost", true},
		{"127.0.0.1", true},
		{"127.1.2.3", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"10.0.0.1", false},
		{"localhost.example.com", false},
		{"example.com", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, httpx.IsLoopback(tc.host))
		})
	}
}
