package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certmail/certmail/internal/api"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
)

// benchBatchSize is the items of one batch in BenchmarkBatch.
const benchBatchSize = 2000

var benchSeq atomic.Int64

// benchLines returns n JSON Lines of distinct orders (no duplicates).
func benchLines(n int) []byte {
	var b bytes.Buffer
	for range n {
		fmt.Fprintf(&b, `{"provider":"opensrs","order_id":"%d","reference":"bench"}`+"\n", benchSeq.Add(1))
	}
	return b.Bytes()
}

// BenchmarkBatch compares POST /v1/resends:batch with `enqueue batch`'s
// engine on the same real redis-server, both at concurrency 32 (the CLI's
// default and the API's): tasks/s of each and their ratio (target >= 0.8).
// The API side goes through HTTP on loopback with a token and JSON Lines.
//
//	go test -run '^$' -bench BenchmarkBatch -benchtime 5x ./cmd/api
func BenchmarkBatch(b *testing.B) {
	be := redistest.Real(b)
	c := be.Client(b)
	enq := tasks.NewEnqueuer(c)
	defer enq.Close()
	srv := api.New(api.Config{Redis: c})
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	var cliDur, apiDur time.Duration
	b.ResetTimer()
	for range b.N {
		in := benchLines(benchBatchSize)
		start := time.Now()
		failed, err := enq.EnqueueBatch(b.Context(), tasks.DefaultOptions(), tasks.Lines(bytes.NewReader(in)), 32, func(tasks.BatchResult) {})
		cliDur += time.Since(start)
		if err != nil || failed > 0 {
			b.Fatalf("enqueue batch: %d failed, %v", failed, err)
		}

		in = benchLines(benchBatchSize)
		start = time.Now()
		resp, err := hs.Client().Post(hs.URL+"/v1/resends:batch", "application/x-ndjson", bytes.NewReader(in))
		if err != nil {
			b.Fatal(err)
		}
		var out bytes.Buffer
		_, _ = out.ReadFrom(resp.Body)
		resp.Body.Close()
		apiDur += time.Since(start)
		if resp.StatusCode != http.StatusOK || !strings.Contains(out.String(), fmt.Sprintf(`"enqueued":%d`, benchBatchSize)) {
			b.Fatalf("api batch: %d %.200s", resp.StatusCode, out.String())
		}
	}
	b.StopTimer()
	n := float64(b.N * benchBatchSize)
	cliRate, apiRate := n/cliDur.Seconds(), n/apiDur.Seconds()
	b.ReportMetric(cliRate, "enqueue-batch-tasks/s")
	b.ReportMetric(apiRate, "api-batch-tasks/s")
	b.ReportMetric(apiRate/cliRate, "api/enqueue-ratio")
	b.Logf("batches of %d: enqueue batch %.0f tasks/s, POST /v1/resends:batch %.0f tasks/s, ratio %.2f (target >= 0.8)",
		benchBatchSize, cliRate, apiRate, apiRate/cliRate)
}

// BenchmarkSingle measures POST /v1/resends requests per second at
// concurrency 32 on a real redis-server, with authentication and, in the
// "limited" case, the per-token rate limit's Redis round trip (a limit
// high enough never to refuse).
//
//	go test -run '^$' -bench BenchmarkSingle -benchtime 5000x ./cmd/api
func BenchmarkSingle(b *testing.B) {
	for _, limited := range []bool{false, true} {
		name := "unlimited"
		if limited {
			name = "limited"
		}
		b.Run(name, func(b *testing.B) {
			be := redistest.Real(b)
			tok := strings.Repeat("b", 40)
			tokens, err := api.LoadTokens(writeTokens(b, "bench:"+tok+"\n"))
			if err != nil {
				b.Fatal(err)
			}
			cfg := api.Config{Redis: be.Client(b), Tokens: tokens}
			if limited {
				cfg.RateLimit = mustRules(b, "100000000/1s")
			}
			srv := api.New(cfg)
			defer srv.Close()
			hs := httptest.NewServer(srv.Handler())
			defer hs.Close()
			tr := hs.Client().Transport.(*http.Transport)
			tr.MaxIdleConnsPerHost = 64
			b.SetParallelism(max(1, 32/procs()))
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					body := fmt.Sprintf(`{"provider":"digicert","order_id":"%d"}`, benchSeq.Add(1))
					req, _ := http.NewRequest("POST", hs.URL+"/v1/resends", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+tok)
					req.Header.Set("Content-Type", "application/json")
					resp, err := hs.Client().Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					var sink bytes.Buffer
					_, _ = sink.ReadFrom(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						b.Errorf("status %d: %s", resp.StatusCode, sink.String())
						return
					}
				}
			})
			b.StopTimer()
			rate := float64(b.N) / time.Since(start).Seconds()
			b.ReportMetric(rate, "requests/s")
			b.Logf("POST /v1/resends at concurrency 32 (%s): %.0f requests/s over %d requests", name, rate, b.N)
		})
	}
}
