package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestDemoServesAPI: `worker --demo` serves the HTTP enqueue API on
// loopback and prints a curl line that, pasted into a shell as is,
// enqueues a task the demo worker then completes.
func TestDemoServesAPI(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl not on PATH (.ci/run installs it): %v", err)
	}
	w := startWorker(t, redistest.Mini(t))
	var line string
	require.Eventually(t, func() bool {
		m := regexp.MustCompile(`(?m)^  (curl .*/v1/resends)$`).FindStringSubmatch(w.stdout.String())
		if m != nil {
			line = m[1]
		}
		return m != nil
	}, 10*time.Second, 20*time.Millisecond, "no curl line in: %s", w.stdout.String())
	require.Regexp(t, `http://127\.0\.0\.1:\d+/v1/resends$`, line)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", line).Output()
	require.NoError(t, err)
	var res struct{ ID, State string }
	require.NoError(t, json.Unmarshal(out, &res), "%s", out)
	require.Equal(t, "pending", res.State)

	statusURL := regexp.MustCompile(`http://[^ ]+/v1/resends`).FindString(line) + "/" + res.ID
	require.Eventually(t, func() bool {
		resp, err := http.Get(statusURL)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct{ State string }
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&st) == nil && st.State == "completed"
	}, 30*time.Second, 100*time.Millisecond)
}
