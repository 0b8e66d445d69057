//go:build benchprof

package main

// Built only by `go run ./bench -cpuprofile FILE` (the benchprof tag): the
// worker writes a CPU profile of its first CERTMAIL_BENCH_CPUPROFILE_FOR to
// CERTMAIL_BENCH_CPUPROFILE. A production build has none of this.

import (
	"os"
	"runtime/pprof"
	"time"
)

func init() {
	path := os.Getenv("CERTMAIL_BENCH_CPUPROFILE")
	if path == "" {
		return
	}
	d, err := time.ParseDuration(os.Getenv("CERTMAIL_BENCH_CPUPROFILE_FOR"))
	if err != nil || d <= 0 {
		d = 5 * time.Second
	}
	f, err := os.Create(path)
	if err != nil {
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return
	}
	go func() {
		time.Sleep(d)
		pprof.StopCPUProfile()
		f.Close()
	}()
}
