package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOutageSettings: OUTAGE_THRESHOLD takes a count, 0 or off (both turn
// outage handling off), the durations their floors; a bad value exits 2
// with one line naming the setting.
func TestOutageSettings(t *testing.T) {
	t.Parallel()
	good := []struct {
		name      string
		env       map[string]string
		threshold int
	}{
		{"defaults", nil, 10},
		{"count", map[string]string{"OUTAGE_THRESHOLD": "4"}, 4},
		{"zero", map[string]string{"OUTAGE_THRESHOLD": "0"}, 0},
		{"off", map[string]string{"OUTAGE_THRESHOLD": "off"}, 0},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DIGICERT_API_KEY": "k"}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := loadConfig(nil, nil, envOf(env))
			require.NoError(t, err)
			require.Equal(t, tc.threshold, cfg.outageThreshold)
			require.Equal(t, 30*time.Second, cfg.outageWindow)
			require.Equal(t, 20*time.Second, cfg.outageProbe)
		})
	}
	bad := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"word", nil, map[string]string{"OUTAGE_THRESHOLD": "many"}, "OUTAGE_THRESHOLD (--outage-threshold)"},
		{"negative flag", []string{"--outage-threshold", "-1"}, nil, "OUTAGE_THRESHOLD (--outage-threshold)"},
		{"short window", nil, map[string]string{"OUTAGE_WINDOW": "500ms"}, "OUTAGE_WINDOW"},
		{"short probe interval", []string{"--outage-probe-interval", "0s"}, nil, "OUTAGE_PROBE_INTERVAL (--outage-probe-interval)"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"DIGICERT_API_KEY": "k"}
			for k, v := range tc.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr, envOf(env))
			require.Equal(t, exitUsage, code, stderr.String())
			require.Contains(t, stderr.String(), tc.wantErr)
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}
}
