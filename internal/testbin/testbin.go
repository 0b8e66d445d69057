// Package testbin builds certmail's commands for tests that must run them
// as real processes: races between several CLI processes, a worker stopped
// with a signal. Calling run() in-process cannot show those, because the
// "processes" would share one Redis client, one clock and one heap.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]string{}
)

// Build compiles the command named by its path in the module ("cmd/dlq")
// once per test binary and returns the executable's path. It needs the go
// tool, which `go test` itself guarantees; the build is not
// race-instrumented, so the processes run at their normal speed.
func Build(t testing.TB, cmd string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[cmd]; ok {
		return p
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "certmail-bin-")
		if err != nil {
			t.Fatalf("testbin: %v", err)
		}
		dir = d
	}
	out := filepath.Join(dir, filepath.Base(cmd))
	c := exec.Command(goTool(), "build", "-o", out, "github.com/certmail/certmail/"+cmd)
	c.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := c.CombinedOutput(); err != nil {
		t.Fatalf("testbin: go build %s: %v\n%s", cmd, err, b)
	}
	built[cmd] = out
	return out
}

// Remove deletes the built executables; call it from TestMain after m.Run.
func Remove() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		_ = os.RemoveAll(dir)
		dir, built = "", map[string]string{}
	}
}

// goTool prefers the go that runs this test (GOROOT of the toolchain) over
// whatever is first on PATH.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
