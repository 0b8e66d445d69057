package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// workerProc is the built worker binary (testbin.Build) running as its own
// process: the one kit of every process test in this package (shutdown,
// in-flight cap, outage proof, fault injection).
type workerProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan struct{}
}

// capWorker is a built worker configured like a production one (no
// --demo), its provider clients pointed at simulators the test owns.
type capWorker = workerProc

// startBuiltWorker runs bin with args and exactly env (plus PATH and HOME),
// and waits until it logs that it started. The test's cleanup stops it with
// SIGTERM (SIGKILL after 30 s) if it still runs.
func startBuiltWorker(t *testing.T, bin string, args []string, env ...string) *workerProc {
	t.Helper()
	w := &workerProc{stderr: &syncBuffer{}, exited: make(chan struct{})}
	w.cmd = exec.Command(bin, args...)
	w.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	w.cmd.Stdout = &syncBuffer{}
	w.cmd.Stderr = w.stderr
	require.NoError(t, w.cmd.Start())
	go func() {
		_ = w.cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-w.exited:
		default:
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-w.exited:
			case <-time.After(30 * time.Second):
				_ = w.cmd.Process.Kill()
				<-w.exited
			}
		}
	})
	require.Eventually(t, func() bool { return strings.Contains(w.stderr.String(), `"msg":"worker started"`) },
		30*time.Second, 20*time.Millisecond, "worker did not start: %s", w.stderr)
	return w
}

// startWorkerProc runs `worker --demo` against the given Redis: the
// simulators run inside the worker process, the queue is the test's.
func startWorkerProc(t *testing.T, bin, redisURL string, env ...string) *workerProc {
	t.Helper()
	return startBuiltWorker(t, bin, []string{"--demo", "--demo-samples=false", "--redis-url", redisURL, "--http-addr", "127.0.0.1:0"}, env...)
}

// startCapWorker runs the worker configured by env alone.
func startCapWorker(t *testing.T, bin string, env ...string) *capWorker {
	t.Helper()
	return startBuiltWorker(t, bin, nil, env...)
}

// terminate sends SIGTERM and returns the exit code and how long the exit took.
func (w *workerProc) terminate(t *testing.T) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-w.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("worker did not exit after SIGTERM: %s", w.stderr)
	}
	return w.cmd.ProcessState.ExitCode(), time.Since(start)
}
