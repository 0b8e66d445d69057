package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestRunServesSimulatorsAndRecordsRequests: the standalone process accepts
// the worker's credentials, answers like the in-process simulators, and
// /requests records what it answered; healthcheck passes; SIGTERM (ctx) stops
// it with exit 0.
func TestRunServesSimulatorsAndRecordsRequests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(runCtx, []string{"--opensrs-addr", "127.0.0.1:0", "--digicert-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"},
			pw, &stderr, envOf(map[string]string{"OPENSRS_USERNAME": "u", "OPENSRS_API_KEY": "k1", "DIGICERT_API_KEY": "k2"}))
		pw.Close()
	}()
	urls := map[string]string{}
	sc := bufio.NewScanner(pr)
	for len(urls) < 3 && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "opensrs simulator: OPENSRS_URL="):
			urls["opensrs"] = strings.TrimPrefix(line, "opensrs simulator: OPENSRS_URL=")
		case strings.HasPrefix(line, "digicert simulator: DIGICERT_URL="):
			urls["digicert"] = strings.TrimPrefix(line, "digicert simulator: DIGICERT_URL=")
		case strings.HasPrefix(line, "admin: http://"):
			urls["admin"] = strings.TrimSuffix(strings.Fields(strings.TrimPrefix(line, "admin: http://"))[0], "/healthz")
		}
	}
	go io.Copy(io.Discard, pr)
	require.Len(t, urls, 3, "stdout: %v, stderr: %s", urls, stderr.String())

	req, err := http.NewRequestWithContext(ctx, http.MethodPut, urls["digicert"]+"order/certificate/2001/resend-emails", strings.NewReader(`{"locale":"en"}`))
	require.NoError(t, err)
	req.Header.Set("X-DC-DEVKEY", "k2")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)

	resp, err = http.Get("http://" + urls["admin"] + "/requests")
	require.NoError(t, err)
	var rep requestsReply
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rep))
	resp.Body.Close()
	require.Equal(t, []digicertRecord{{Time: rep.DigiCert[0].Time, Method: "PUT", OrderID: "2001", Status: 204}}, rep.DigiCert)
	require.Empty(t, rep.OpenSRS)

	require.Equal(t, 0, run(ctx, []string{"healthcheck", urls["admin"]}, io.Discard, io.Discard, envOf(nil)))
	stop()
	select {
	case code := <-done:
		require.Equal(t, 0, code, stderr.String())
	case <-ctx.Done():
		t.Fatal("run did not stop")
	}
	require.Equal(t, 1, run(ctx, []string{"healthcheck", urls["admin"]}, io.Discard, io.Discard, envOf(nil)), "healthcheck passes on a stopped simulator")
}

func TestRunRejectsBadInput(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"NonLoopbackAddr", []string{"--digicert-addr", "0.0.0.0:1"}, map[string]string{"DIGICERT_API_KEY": "s3cret"}, "--digicert-addr"},
		{"NoKeys", nil, nil, "no simulator configured"},
		{"OpenSRSWithoutUser", nil, map[string]string{"OPENSRS_API_KEY": "s3cret"}, "OPENSRS_USERNAME"},
		{"BothKeyAndFile", nil, map[string]string{"DIGICERT_API_KEY": "s3cret", "DIGICERT_API_KEY_FILE": missing}, "DIGICERT_API_KEY and DIGICERT_API_KEY_FILE"},
		{"UnreadableFile", nil, map[string]string{"DIGICERT_API_KEY_FILE": missing}, "DIGICERT_API_KEY_FILE"},
		{"Argument", []string{"extra"}, map[string]string{"DIGICERT_API_KEY": "s3cret"}, "unexpected argument"},
		{"HealthcheckArgs", []string{"healthcheck", "a", "b"}, nil, "at most one argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			require.Equal(t, 2, run(ctx, tc.args, io.Discard, &stderr, envOf(tc.env)))
			require.Contains(t, stderr.String(), tc.want)
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), stderr.String())
			require.NotContains(t, stderr.String(), "s3cret")
		})
	}
}
