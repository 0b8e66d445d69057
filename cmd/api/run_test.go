package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/cli"
)

// TestRunRefuses: without a tokens file the API does not start unless
// --no-auth is given on a loopback address; every refusal is one line
// naming the flag, exit code 2, and nothing listens.
func TestRunRefuses(t *testing.T) {
	t.Parallel()
	good := filepath.Join(t.TempDir(), "tokens")
	require.NoError(t, os.WriteFile(good, []byte("billing:"+strings.Repeat("a", 40)+"\n"), 0o600))
	bad := filepath.Join(t.TempDir(), "bad")
	require.NoError(t, os.WriteFile(bad, []byte("billing:short\n"), 0o600))
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"NoTokens", nil, nil, "api: --tokens-file: required (API_TOKENS_FILE)"},
		{"NoAuthNotLoopback", []string{"--no-auth", "--addr", "0.0.0.0:8081"}, nil, "api: --no-auth: only with a loopback --addr"},
		{"NoAuthNotLoopbackEnv", []string{"--no-auth"}, map[string]string{"API_ADDR": "10.1.2.3:8081"}, "api: --no-auth: only with a loopback --addr"},
		{"NoAuthWithTokens", []string{"--no-auth", "--tokens-file", good}, nil, "api: --no-auth: not with --tokens-file"},
		{"BadTokensFile", []string{"--tokens-file", bad}, nil, "api: --tokens-file: API_TOKENS_FILE " + bad + ": line 1 (billing): token must be at least 32"},
		{"MissingTokensFile", nil, map[string]string{"API_TOKENS_FILE": "/nonexistent/tokens"}, "api: --tokens-file: API_TOKENS_FILE: open /nonexistent/tokens"},
		{"BadRateLimit", []string{"--tokens-file", good, "--rate-limit", "fast"}, nil, "api: --rate-limit:"},
		{"BadAddr", []string{"--tokens-file", good, "--addr", "8081"}, nil, "api: --addr: want HOST:PORT"},
		{"BadRedisURL", []string{"--tokens-file", good, "--redis-url", "http://u:s3cret@x/0"}, nil, "api: --redis-url: must be a URL"},
		{"Argument", []string{"serve"}, nil, `api: unexpected argument "serve"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			started := false
			code := run(ctx, tc.args, &out, &errb, func(k string) string { return tc.env[k] }, func(string) { started = true })
			require.Equal(t, cli.ExitUsage, code, "stderr: %s", errb.String())
			require.False(t, started)
			require.Equal(t, 1, strings.Count(errb.String(), "\n"), "one line: %q", errb.String())
			require.True(t, strings.HasPrefix(errb.String(), tc.want), "got %q, want prefix %q", errb.String(), tc.want)
			require.NotContains(t, errb.String(), "s3cret")
		})
	}
}
