package tasks

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/certmail/certmail/internal/outcome"
	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
)

type countObserver struct{ n *atomic.Int64 }

func (c countObserver) ObserveAttempt(string, outcome.Outcome, time.Duration) { c.n.Add(1) }

// BenchmarkPipeline measures processing throughput on a real redis-server
// (miniredis's speed says nothing about production): asynq with a no-op
// handler is the baseline, against certmail's Handler with an instant fake
// provider, which adds payload validation, the idempotency check and the
// pipelined outcome record. Run:
//
//	go test -run='^$' -bench=BenchmarkPipeline -benchtime=5000x -count=5 ./internal/tasks
func BenchmarkPipeline(b *testing.B) {
	for _, name := range []string{"asynq-noop", "certmail-handler"} {
		b.Run(name, func(b *testing.B) {
			be := redistest.Real(b)
			rdb := be.Client(b)
			var done atomic.Int64
			var h asynq.Handler = asynq.HandlerFunc(func(context.Context, *asynq.Task) error { done.Add(1); return nil })
			if name == "certmail-handler" {
				fake := &fakeResender{}
				h = &Handler{
					Resenders:       map[providers.Name]providers.Resender{providers.OpenSRS: fake},
					Recorder:        outcome.NewStore(rdb, time.Hour),
					Observer:        countObserver{&done},
					Logger:          slog.New(slog.DiscardHandler),
					ProviderTimeout: 5 * time.Second,
					InAttempt:       DefaultInAttempt,
				}
			}
			client := asynq.NewClientFromRedisClient(rdb)
			var wg sync.WaitGroup
			per := (b.N + 15) / 16
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w * per; i < min((w+1)*per, b.N); i++ {
						task, err := NewTask(NewOpenSRSPayload(fmt.Sprint(100000+i), "", false), DefaultOptions(), "")
						if err == nil {
							_, err = client.Enqueue(task)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
				Concurrency: 20, Queues: map[string]int{QueueOpenSRS: 1},
				TaskCheckInterval: 50 * time.Millisecond, LogLevel: asynq.FatalLevel,
			})
			b.ResetTimer()
			start := time.Now()
			if err := srv.Start(h); err != nil {
				b.Fatal(err)
			}
			for done.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			srv.Shutdown()
			b.ReportMetric(float64(b.N)/el.Seconds(), "tasks/s")
		})
	}
}
