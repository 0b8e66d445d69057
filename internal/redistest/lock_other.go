//go:build !linux

package redistest

// lockServer is a no-op off Linux: run `go test -p 1` there when tests
// share one Redis by URL.
func lockServer(string) error { return nil }
