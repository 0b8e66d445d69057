package digicert

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    []Option
		wantErr string
		want    string // substring of String() on success
	}{
		{name: "Defaults", opts: []Option{WithAPIKey(testKey)}, want: `baseURL: "https://www.digicert.com/services/v2/"`},
		{name: "EU", opts: []Option{WithAPIKey(testKey), WithBaseURL(EUURL)}, want: `"https://certcentral.digicert.eu/services/v2/"`},
		{name: "LoopbackHTTP", opts: []Option{WithAPIKey(testKey), WithBaseURL("http://127.0.0.1:8080/x/")}},
		{name: "LocalhostHTTP", opts: []Option{WithAPIKey(testKey), WithBaseURL("http://localhost:1/services/v2/")}},
		{name: "IPv6LoopbackHTTP", opts: []Option{WithAPIKey(testKey), WithBaseURL("http://[::1]:1/")}},
		{name: "AllOptions", opts: []Option{
			WithAPIKey(testKey), WithTimeout(time.Second), WithUserAgent("x/2"),
			WithDefaultRateLimitWait(0), WithHTTPClient(&httpClientForTest),
		}, want: `userAgent: "x/2", timeout: 1s, rateLimitWait: 0s`},
		{name: "NoKey", opts: nil, wantErr: "API key is required"},
		{name: "EmptyKey", opts: []Option{WithAPIKey("")}, wantErr: "API key is empty"},
		{name: "KeyWithNewline", opts: []Option{WithAPIKey(testKey + "\r\nX: y")}, wantErr: "control characters"},
		{name: "KeyWithSpace", opts: []Option{WithAPIKey(" " + testKey)}, wantErr: "white space"},
		{name: "NilHTTPClient", opts: []Option{WithAPIKey(testKey), WithHTTPClient(nil)}, wantErr: "HTTP client is nil"},
		{name: "InsecureHTTPClient", opts: []Option{WithAPIKey(testKey), WithHTTPClient(&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}})}, wantErr: "skips TLS verification"},
		{name: "NilOption", opts: []Option{WithAPIKey(testKey), nil}, wantErr: "nil option"},
		{name: "HTTPRemote", opts: []Option{WithAPIKey(testKey), WithBaseURL("http://www.digicert.com/services/v2/")}, wantErr: "loopback"},
		{name: "NoTrailingSlash", opts: []Option{WithAPIKey(testKey), WithBaseURL("https://www.digicert.com/services/v2")}, wantErr: "slash"},
		{name: "Relative", opts: []Option{WithAPIKey(testKey), WithBaseURL("/services/v2/")}, wantErr: "absolute"},
		{name: "FTP", opts: []Option{WithAPIKey(testKey), WithBaseURL("ftp://example.com/")}, wantErr: "https"},
		{name: "Query", opts: []Option{WithAPIKey(testKey), WithBaseURL("https://example.com/v2/?a=b")}, wantErr: "query"},
		{name: "UserInfo", opts: []Option{WithAPIKey(testKey), WithBaseURL("https://u:" + testKey + "@example.com/")}, wantErr: "user info"},
		{name: "Unparsable", opts: []Option{WithAPIKey(testKey), WithBaseURL("https://exa mple.com/\x7f")}, wantErr: "invalid base URL"},
		{name: "ZeroTimeout", opts: []Option{WithAPIKey(testKey), WithTimeout(0)}, wantErr: "not positive"},
		{name: "NegativeWait", opts: []Option{WithAPIKey(testKey), WithDefaultRateLimitWait(-time.Second)}, wantErr: "negative"},
		{name: "EmptyUserAgent", opts: []Option{WithAPIKey(testKey), WithUserAgent(" ")}, wantErr: "user agent is empty"},
		{name: "UserAgentNewline", opts: []Option{WithAPIKey(testKey), WithUserAgent("a\nb")}, wantErr: "control"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tc.opts...)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), testKey)
				require.Nil(t, c)
				return
			}
			require.NoError(t, err)
			require.Contains(t, c.String(), tc.want)
			require.NotContains(t, c.String(), testKey)
		})
	}
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	c, err := New(WithAPIKey(testKey))
	require.NoError(t, err)
	require.Equal(t, DefaultTimeout, c.timeout)
	require.Equal(t, DefaultUserAgent, c.userAgent)
	require.Equal(t, DefaultRateLimitWait, c.rateLimitWait)

	// A caller's client is copied, not modified (the transport defaults and
	// the redirect refusal are tested in httpx).
	hc := httpClientForTest
	_, err = New(WithAPIKey(testKey), WithHTTPClient(&hc))
	require.NoError(t, err)
	require.Nil(t, hc.CheckRedirect)
}
