package main

import (
	"bytes"
	"context"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/testbin"
)

// runBin runs the built enqueue binary with REDIS_URL set.
func runBin(t *testing.T, bin, redisURL string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"REDIS_URL=" + redisURL}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "stderr: %s", errOut.String())
		code = ee.ExitCode()
	}
	return cliResult{code: code, stdout: out.String(), stderr: errOut.String()}
}

// TestNoScriptPermission runs the enqueue binary as a Redis user that may
// SET but not run scripts: the mark is set, asynq's enqueue script and the
// release script are refused. The upstream retry, as a full user, must
// enqueue a task that `enqueue status` finds, not print "duplicate of" a
// task that does not exist.
func TestNoScriptPermission(t *testing.T) {
	t.Parallel()
	b := redistest.Real(t)
	e := newEnv(t, b)
	bin := testbin.Build(t, "cmd/enqueue")

	name := "noscript-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	require.NoError(t, e.rdb.Do(t.Context(), "ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all", "-@scripting").Err())
	t.Cleanup(func() { _ = e.rdb.Do(context.Background(), "ACL", "DELUSER", name).Err() })
	u, err := url.Parse(b.URL)
	require.NoError(t, err)
	u.User = url.UserPassword(name, "pw")
	limited := u.String()

	args := []string{"digicert", "--order-id", "4242", "--approval-email", "example.com=admin@example.com"}
	r := runBin(t, bin, limited, args...)
	requireOneLineFailure(t, r, "NOPERM")
	require.Contains(t, r.stderr, "not enqueued")
	require.NotContains(t, r.stderr, "pw@", "no password in the message")

	r = runBin(t, bin, b.URL, args...)
	id := requireID(t, r)
	require.Empty(t, r.stderr, "a new task, not a duplicate")

	r = runBin(t, bin, b.URL, "status", id, "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, `"state": "pending"`)

	// And the next retry is a duplicate of that existing task.
	r = runBin(t, bin, b.URL, args...)
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, id+"\n", r.stdout)
	require.Equal(t, "duplicate of "+id+"\n", r.stderr)
}
