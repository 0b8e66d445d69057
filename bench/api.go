package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// apiBatchItems is the size of each POST /v1/resends:batch request of the
// API figure: the route's limit, as a producer sending a large file would.
// Each request waits for its last item before the next one starts, so the
// tail of every batch runs below full concurrency: with batches of 2,000
// the ratio measured 0.54-0.61 where 10,000 gave 0.80 (BENCHMARKS.md).
const apiBatchItems = 10000

// apiSingleConc is the concurrency of the single-request part (issue 12).
const apiSingleConc = 32

// figAPI measures the HTTP enqueue API (cmd/api): the file of figure 2 sent
// as ndjson batches of apiBatchItems, one after the other, against
// `enqueue batch` of the same file in the same run (both deduplicated,
// from the first request to the last answer / process start to exit); and
// single POST /v1/resends requests per second at concurrency 32. The API
// runs with its per-token rate limit off, as `enqueue batch` has none.
func (e *env) figAPI(ctx context.Context) (result, error) {
	r := result{title: fmt.Sprintf("6. HTTP API (cmd/api): %d lines as ndjson batches of %d vs enqueue batch of the same file; single POST /v1/resends at concurrency %d",
		e.p.enqLines, apiBatchItems, apiSingleConc)}
	lines := make([]string, e.p.enqLines)
	for i := range lines {
		lines[i] = line(i)
	}
	file := filepath.Join(e.dir, "api-batch.jsonl")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return r, err
	}
	const token = "bench-token-0123456789abcdef-0123456789abcdef"
	tokens := filepath.Join(e.dir, "api-tokens")
	if err := os.WriteFile(tokens, []byte("bench:"+token+"\n"), 0o600); err != nil {
		return r, err
	}
	port, err := freePort()
	if err != nil {
		return r, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	api, err := e.startProc(ctx, "api", []string{e.api, "--addr", addr, "--tokens-file", tokens, "--rate-limit", "off"},
		[]string{"REDIS_URL=" + e.url}, "api listening")
	if err != nil {
		return r, err
	}
	defer api.stop()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: apiSingleConc}, Timeout: time.Minute}
	post := func(path, ctype string, body []byte) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", ctype)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	pendingIs := func(want int) error {
		n, err := e.count(ctx, "pending")
		if err != nil {
			return err
		}
		if n != int64(want) {
			return fmt.Errorf("%d tasks pending, want %d", n, want)
		}
		return nil
	}
	viaAPI := func() (float64, error) {
		if err := e.flush(ctx); err != nil {
			return 0, err
		}
		start := time.Now()
		for i := 0; i < len(lines); i += apiBatchItems {
			part := lines[i:min(i+apiBatchItems, len(lines))]
			code, err := post("/v1/resends:batch", "application/x-ndjson", []byte(strings.Join(part, "\n")+"\n"))
			if err != nil {
				return 0, err
			}
			if code != http.StatusOK {
				return 0, fmt.Errorf("POST /v1/resends:batch: HTTP %d", code)
			}
		}
		took := time.Since(start)
		if err := pendingIs(len(lines)); err != nil {
			return 0, fmt.Errorf("api: %w", err)
		}
		return float64(len(lines)) / took.Seconds(), nil
	}
	viaCLI := func() (float64, error) {
		if err := e.flush(ctx); err != nil {
			return 0, err
		}
		c := exec.CommandContext(ctx, e.enq, "batch", file)
		c.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "REDIS_URL=" + e.url}
		var out strings.Builder
		c.Stdout, c.Stderr = io.Discard, &out
		start := time.Now()
		if err := c.Run(); err != nil {
			return 0, fmt.Errorf("enqueue batch: %v: %s", err, out.String())
		}
		took := time.Since(start)
		if err := pendingIs(len(lines)); err != nil {
			return 0, fmt.Errorf("enqueue batch: %w", err)
		}
		return float64(len(lines)) / took.Seconds(), nil
	}
	singles := func() (float64, error) {
		if err := e.flush(ctx); err != nil {
			return 0, err
		}
		n := min(len(lines), 4000)
		var next atomic.Int64
		var failed atomic.Value
		var wg sync.WaitGroup
		start := time.Now()
		for range apiSingleConc {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n || ctx.Err() != nil {
						return
					}
					code, err := post("/v1/resends", "application/json", []byte(lines[i]))
					if err == nil && code != http.StatusAccepted {
						err = fmt.Errorf("POST /v1/resends: HTTP %d", code)
					}
					if err != nil {
						failed.CompareAndSwap(nil, err)
						return
					}
				}
			})
		}
		wg.Wait()
		took := time.Since(start)
		if err, _ := failed.Load().(error); err != nil {
			return 0, err
		}
		if err := pendingIs(n); err != nil {
			return 0, fmt.Errorf("single requests: %w", err)
		}
		return float64(n) / took.Seconds(), nil
	}
	var apiRates, cliRates, singleRates []float64
	for i := range e.p.runs {
		a, err := viaAPI()
		if err != nil {
			return r, err
		}
		c, err := viaCLI()
		if err != nil {
			return r, err
		}
		s, err := singles()
		if err != nil {
			return r, err
		}
		apiRates, cliRates, singleRates = append(apiRates, a), append(cliRates, c), append(singleRates, s)
		r.runs = append(r.runs, fmt.Sprintf("run %d: API batches %.0f tasks/s, enqueue batch %.0f tasks/s, ratio %.2f; single POST %.0f req/s", i+1, a, c, a/c, s))
	}
	a, c := median(apiRates), median(cliRates)
	r.rows = append(r.rows,
		row{"API batch (tasks/s)", fmt.Sprintf("%.0f", a), fmt.Sprintf("%.0f (enqueue batch)", c), fmt.Sprintf("%.2f", a/c), "≥ 0.8"},
		row{fmt.Sprintf("API single POST (req/s, concurrency %d)", apiSingleConc), fmt.Sprintf("%.0f", median(singleRates)), "—", "—", "—"})
	return r, nil
}
