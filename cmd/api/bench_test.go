package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/certmail/certmail/internal/api"
	"github.com/certmail/certmail/internal/redistest"
	"github.com/certmail/certmail/internal/tasks"
	"github.com/certmail/certmail/internal/testbin"
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
	cli := func() {
		in := benchLines(benchBatchSize)
		start := time.Now()
		failed, err := enq.EnqueueBatch(b.Context(), tasks.DefaultOptions(), tasks.Lines(bytes.NewReader(in)), 32, func(tasks.BatchResult) {}, nil)
		cliDur += time.Since(start)
		if err != nil || failed > 0 {
			b.Fatalf("enqueue batch: %d failed, %v", failed, err)
		}
	}
	viaAPI := func() {
		in := benchLines(benchBatchSize)
		start := time.Now()
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
	for i := range b.N { // alternate which goes first: neither gets the warmer Redis
		if i%2 == 0 {
			cli()
			viaAPI()
		} else {
			viaAPI()
			cli()
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

// BenchmarkBatchBinaries is BenchmarkBatch between the built binaries: the
// `enqueue batch FILE` process against POST /v1/resends:batch to a running
// `api` process, on the same real redis-server, batches of
// benchBatchSize distinct items.
//
//	go test -run '^$' -bench BenchmarkBatchBinaries -benchtime 5x ./cmd/api
func BenchmarkBatchBinaries(b *testing.B) {
	be := redistest.Real(b)
	enqueueBin := testbin.Build(b, "cmd/enqueue")
	apiBin := testbin.Build(b, "cmd/api")
	dir := b.TempDir()
	tok := strings.Repeat("c", 40)
	tokens := writeTokens(b, "bench:"+tok+"\n")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	apiCmd := exec.Command(apiBin)
	apiCmd.Env = append(os.Environ(), "REDIS_URL="+be.URL, "API_TOKENS_FILE="+tokens, "API_ADDR="+addr, "API_RATE_LIMIT=off")
	if err := apiCmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = apiCmd.Process.Signal(syscall.SIGTERM); _ = apiCmd.Wait() }()
	client := &http.Client{Timeout: time.Minute}
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("api never ready")
		}
		time.Sleep(50 * time.Millisecond)
	}

	var cliDur, apiDur time.Duration
	b.ResetTimer()
	cli := func(i int) {
		file := filepath.Join(dir, fmt.Sprintf("batch-%d.jsonl", i))
		if err := os.WriteFile(file, benchLines(benchBatchSize), 0o600); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		out, err := exec.Command(enqueueBin, "batch", file, "--redis-url", be.URL).CombinedOutput()
		cliDur += time.Since(start)
		if err != nil {
			b.Fatalf("enqueue batch: %v: %.300s", err, out)
		}
	}
	viaAPI := func() {
		in := benchLines(benchBatchSize)
		start := time.Now()
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/resends:batch", bytes.NewReader(in))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var body bytes.Buffer
		_, _ = body.ReadFrom(resp.Body)
		resp.Body.Close()
		apiDur += time.Since(start)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body.String(), fmt.Sprintf(`"enqueued":%d`, benchBatchSize)) {
			b.Fatalf("api batch: %d %.200s", resp.StatusCode, body.String())
		}
	}
	for i := range b.N { // alternate which goes first
		if i%2 == 0 {
			cli(i)
			viaAPI()
		} else {
			viaAPI()
			cli(i)
		}
	}
	b.StopTimer()
	n := float64(b.N * benchBatchSize)
	cliRate, apiRate := n/cliDur.Seconds(), n/apiDur.Seconds()
	b.ReportMetric(cliRate, "enqueue-batch-tasks/s")
	b.ReportMetric(apiRate, "api-batch-tasks/s")
	b.ReportMetric(apiRate/cliRate, "api/enqueue-ratio")
	b.Logf("binaries, batches of %d: enqueue batch %.0f tasks/s, POST /v1/resends:batch %.0f tasks/s, ratio %.2f (target >= 0.8)",
		benchBatchSize, cliRate, apiRate, apiRate/cliRate)
}
