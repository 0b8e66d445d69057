package main

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/certmail/certmail/internal/ratelimit"
)

func procs() int { return runtime.GOMAXPROCS(0) }

func writeTokens(tb testing.TB, content string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func mustRules(tb testing.TB, s string) []ratelimit.Rule {
	tb.Helper()
	r, err := ratelimit.ParseRules(s)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}
