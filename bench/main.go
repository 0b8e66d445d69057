// Command bench measures what certmail's pipeline costs against plain asynq,
// each figure next to a baseline measured in the same run (BENCHMARKS.md):
//
//  1. worker throughput vs a naive asynq worker (decode, one provider call,
//     return), protections switched off by configuration;
//  2. `enqueue batch` vs raw asynq Client.Enqueue from 16 goroutines;
//  3. latency-bound throughput (provider answering after 100 ms) vs the ideal;
//  4. pickup latency of an idle worker, and the Redis commands/s it costs,
//     vs the naive worker on asynq's defaults;
//  5. peak RSS (VmHWM) of the worker process with 100,000 pending tasks;
//  6. the HTTP API (cmd/api): ndjson batches vs `enqueue batch` of the same
//     file, and single POST requests per second at concurrency 32.
//
// It starts its own redis-server on a free loopback port, the in-process
// provider simulators, and builds and runs the real worker and enqueue
// binaries; the baselines run as child processes of this program, so that
// every side pays for its own process. Run it from the repository root:
//
//	go run ./bench            # the full run (a few minutes)
//	go run ./bench -smoke     # tiny sizes, seconds (CI)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
	"github.com/certmail/certmail/internal/tasks"
)

const (
	simUser = "benchreseller"
	simKey  = "0123456789abcdef0123456789abcdef"
	dcKey   = "bench-digicert-key"
)

type params struct {
	runs         int
	tasks        int
	concurrency  int
	enqLines     int
	latTasks     int
	latConc      int
	latency      time.Duration
	pickups      int
	idle         time.Duration
	rssTasks     int
	rssFor       time.Duration
	cpuprofile   string
	only         map[string]bool
	keep         bool
	workerEnv    []string
	naiveCheck   time.Duration
	smoke        bool
	enqueueConc  int
	rawEnqueuers int
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-child" {
		os.Exit(child(os.Args[2], os.Args[3:]))
	}
	var p params
	var only, extraEnv string
	flag.IntVar(&p.runs, "runs", 3, "runs of each figure; medians are reported")
	flag.IntVar(&p.tasks, "tasks", 20000, "tasks of the throughput figure (half OpenSRS, half DigiCert)")
	flag.IntVar(&p.concurrency, "concurrency", 50, "worker concurrency per queue of the throughput figure")
	flag.IntVar(&p.enqLines, "enqueue-lines", 20000, "lines of the enqueue batch figure")
	flag.IntVar(&p.enqueueConc, "enqueue-concurrency", 0, "enqueue batch --concurrency (0: its default)")
	flag.IntVar(&p.rawEnqueuers, "raw-enqueuers", 16, "goroutines of the raw asynq enqueue baseline")
	flag.IntVar(&p.latTasks, "latency-tasks", 6000, "tasks of the latency-bound figure")
	flag.IntVar(&p.latConc, "latency-concurrency", 200, "total worker concurrency of the latency-bound and RSS figures")
	flag.DurationVar(&p.latency, "latency", 100*time.Millisecond, "provider latency of the latency-bound and RSS figures")
	flag.IntVar(&p.pickups, "pickups", 40, "tasks enqueued one by one on an idle worker")
	flag.DurationVar(&p.idle, "idle", 10*time.Second, "how long the idle worker's Redis commands are counted")
	flag.IntVar(&p.rssTasks, "rss-tasks", 100000, "pending tasks of the RSS figure")
	flag.DurationVar(&p.rssFor, "rss-for", 15*time.Second, "how long the worker processes the RSS backlog before VmHWM is read")
	flag.StringVar(&p.cpuprofile, "cpuprofile", "", "write CPU profiles of the certmail worker (to this file) and of the naive worker (to this file + \".naive\") during their first throughput runs")
	flag.StringVar(&only, "only", "", "comma-separated figures to run: worker,enqueue,latency,pickup,rss,api (default all)")
	flag.StringVar(&extraEnv, "worker-env", "", "comma-separated NAME=VALUE settings added to the certmail worker's environment")
	flag.DurationVar(&p.naiveCheck, "naive-task-check", 0, "the naive worker's asynq TaskCheckInterval (0: asynq's default, 1s)")
	flag.BoolVar(&p.keep, "keep", false, "keep the temporary directory (logs, binaries, Redis)")
	flag.BoolVar(&p.smoke, "smoke", false, "tiny sizes, one run: proves the tool works in seconds (CI)")
	flag.Parse()
	if p.smoke {
		p.runs, p.tasks, p.enqLines, p.latTasks, p.pickups, p.rssTasks = 1, 400, 400, 400, 4, 1000
		p.idle, p.rssFor = 2*time.Second, time.Second
	}
	if only != "" {
		p.only = map[string]bool{}
		for _, f := range strings.Split(only, ",") {
			p.only[strings.TrimSpace(f)] = true
		}
	}
	if extraEnv != "" {
		p.workerEnv = strings.Split(extraEnv, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, p); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// env is the running bench: its directory, Redis, binaries.
type env struct {
	p      params
	dir    string
	redis  *exec.Cmd
	addr   string
	url    string
	rdb    *redis.Client
	worker string // built cmd/worker
	prof   string // built cmd/worker with the benchprof tag
	enq    string // built cmd/enqueue
	api    string // built cmd/api
	self   string
}

func bench(ctx context.Context, p params) (err error) {
	e := &env{p: p}
	if e.dir, err = os.MkdirTemp("", "certmail-bench-"); err != nil {
		return err
	}
	defer func() {
		if p.keep {
			fmt.Println("kept", e.dir)
		} else {
			_ = os.RemoveAll(e.dir)
		}
	}()
	if e.self, err = os.Executable(); err != nil {
		return err
	}
	if err := e.build(); err != nil {
		return err
	}
	if err := e.startRedis(); err != nil {
		return err
	}
	defer e.stopRedis()
	e.machine()

	type figure struct {
		name string
		run  func(context.Context) (result, error)
	}
	figures := []figure{
		{"worker", e.figWorker},
		{"enqueue", e.figEnqueue},
		{"latency", e.figLatency},
		{"pickup", e.figPickup},
		{"rss", e.figRSS},
		{"api", e.figAPI},
	}
	var results []result
	for _, f := range figures {
		if p.only != nil && !p.only[f.name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := f.run(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		results = append(results, r)
		r.print(os.Stdout)
	}
	fmt.Println()
	fmt.Println("| figure | certmail | baseline | ratio | target |")
	fmt.Println("|---|---:|---:|---:|---|")
	for _, r := range results {
		for _, row := range r.rows {
			fmt.Printf("| %s | %s | %s | %s | %s |\n", row.name, row.value, row.base, row.ratio, row.target)
		}
	}
	return nil
}

// result is one figure's rows, and the per-run values behind them.
type result struct {
	title string
	runs  []string
	rows  []row
}

type row struct{ name, value, base, ratio, target string }

func (r result) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %s\n", r.title)
	for _, s := range r.runs {
		fmt.Fprintln(w, "   ", s)
	}
	for _, row := range r.rows {
		fmt.Fprintf(w, "  %s: %s (baseline %s) ratio %s, target %s\n", row.name, row.value, row.base, row.ratio, row.target)
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

// ---------------------------------------------------------------- setup

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run bench from inside the certmail module (go run ./bench)")
	}
	return filepath.Dir(mod), nil
}

func (e *env) build() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	b := func(out string, args ...string) error {
		c := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
		c.Dir = root
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %v: %v\n%s", args, err, o)
		}
		return nil
	}
	e.worker, e.enq = filepath.Join(e.dir, "worker"), filepath.Join(e.dir, "enqueue")
	if err := b(e.worker, "./cmd/worker"); err != nil {
		return err
	}
	if err := b(e.enq, "./cmd/enqueue"); err != nil {
		return err
	}
	e.api = filepath.Join(e.dir, "api")
	if err := b(e.api, "./cmd/api"); err != nil {
		return err
	}
	if e.p.cpuprofile != "" {
		e.prof = filepath.Join(e.dir, "worker-prof")
		if err := b(e.prof, "-tags", "benchprof", "./cmd/worker"); err != nil {
			return err
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (e *env) startRedis() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	e.addr = "127.0.0.1:" + strconv.Itoa(port)
	e.url = "redis://" + e.addr + "/0"
	e.redis = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", e.dir, "--maxmemory-policy", "noeviction")
	logf, err := os.Create(filepath.Join(e.dir, "redis.log"))
	if err != nil {
		return err
	}
	e.redis.Stdout, e.redis.Stderr = logf, logf
	if err := e.redis.Start(); err != nil {
		return fmt.Errorf("redis-server (must be on PATH): %w", err)
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.addr, PoolSize: 64})
	for i := 0; ; i++ {
		if e.rdb.Ping(context.Background()).Err() == nil {
			return nil
		}
		if i > 200 {
			return errors.New("redis-server did not answer")
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (e *env) stopRedis() {
	if e.rdb != nil {
		_ = e.rdb.Close()
	}
	if e.redis != nil && e.redis.Process != nil {
		_ = e.redis.Process.Signal(syscall.SIGTERM)
		_ = e.redis.Wait()
	}
}

func (e *env) machine() {
	v, _ := exec.Command("redis-server", "--version").Output()
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	gv, _ := exec.Command("go", "version").Output()
	fmt.Printf("machine: %d cores (%s); %s; %s", numCPU(), model, strings.TrimSpace(string(v)), gv)
	fmt.Printf("runs per figure: %d (medians)\n", e.p.runs)
}

func (e *env) flush(ctx context.Context) error { return e.rdb.FlushAll(ctx).Err() }

// sims are the two provider simulators of one measurement, fresh each time
// (they keep every request).
type sims struct {
	o *opensrstest.Server
	d *digicerttest.Server
}

func newSims(delay time.Duration) *sims {
	s := &sims{o: opensrstest.NewServer(simUser, simKey), d: digicerttest.NewServer(dcKey)}
	if delay > 0 {
		s.o.SetDefault(opensrstest.Behavior{Delay: delay})
		s.d.SetDefault(digicerttest.Behavior{Delay: delay})
	}
	return s
}

func (s *sims) Close() { s.o.Close(); s.d.Close() }

// payload is task i of a figure: even OpenSRS, odd DigiCert.
func payload(i int) tasks.Payload {
	id := strconv.Itoa(100000 + i)
	if i%2 == 0 {
		return tasks.NewOpenSRSPayload(id, "bench", false)
	}
	return &tasks.DigiCertPayload{OrderID: id, Locale: "en", Reference: "bench",
		DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}}
}

func line(i int) string {
	p := payload(i)
	m := map[string]any{"provider": string(p.Provider()), "order_id": p.Order(), "reference": p.Ref()}
	if d, ok := p.(*tasks.DigiCertPayload); ok {
		m["locale"] = d.Locale
		m["domain_approval_emails"] = d.DomainApprovalEmails
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// fill puts n tasks straight into the queues (asynq, 16 goroutines), as
// enqueue would without dedup marks: the figures time the worker only.
func (e *env) fill(ctx context.Context, n int) error {
	c := asynq.NewClientFromRedisClient(e.rdb)
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	var next, failed sync.Mutex
	i := 0
	var firstErr error
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= n || ctx.Err() != nil {
					return
				}
				t, err := tasks.NewTask(payload(k), opts, uuid.NewString())
				if err == nil {
					_, err = c.EnqueueContext(ctx, t)
				}
				if err != nil {
					failed.Lock()
					firstErr = cmpErr(firstErr, err)
					failed.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

var queues = []string{"opensrs", "digicert"}

// counts sums a state's set over both queues: completed, archived, retry.
func (e *env) count(ctx context.Context, state string) (int64, error) {
	var n int64
	for _, q := range queues {
		key := "asynq:{" + q + "}:" + state
		var v int64
		var err error
		if state == "pending" {
			v, err = e.rdb.LLen(ctx, key).Result()
		} else {
			v, err = e.rdb.ZCard(ctx, key).Result()
		}
		if err != nil {
			return 0, err
		}
		n += v
	}
	return n, nil
}

// proc is a worker process (certmail's or the naive one).
type proc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func (e *env) startProc(ctx context.Context, name string, args, extraEnv []string, ready string) (*proc, error) {
	p := &proc{log: filepath.Join(e.dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano())), exited: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		_ = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(p.log)
		if strings.Contains(string(b), ready) {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited at start: %s", name, b)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not start: %s", name, b)
		}
	}
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// hwm reads the process's peak resident set (VmHWM) in bytes.
func (p *proc) hwm() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// startCertmail runs the built worker against the simulators with
// perQueue concurrency and the protections off.
func (e *env) startCertmail(ctx context.Context, s *sims, perQueue int, profile string, profileFor time.Duration) (*proc, error) {
	bin := e.worker
	envv := []string{
		"REDIS_URL=" + e.url, "HTTP_ADDR=off",
		"OPENSRS_USERNAME=" + simUser, "OPENSRS_API_KEY=" + simKey, "OPENSRS_URL=" + s.o.URL(),
		"DIGICERT_API_KEY=" + dcKey, "DIGICERT_URL=" + s.d.URL(),
		"WORKER_CONCURRENCY=" + strconv.Itoa(perQueue),
		"DIGICERT_RATE_LIMIT=off", "OPENSRS_RATE_LIMIT=off", "OPENSRS_MAX_IN_FLIGHT=0", "DIGICERT_MAX_IN_FLIGHT=0",
		"OUTAGE_THRESHOLD=off",
	}
	if profile != "" {
		bin = e.prof
		envv = append(envv, "CERTMAIL_BENCH_CPUPROFILE="+profile, "CERTMAIL_BENCH_CPUPROFILE_FOR="+profileFor.String())
	}
	envv = append(envv, e.p.workerEnv...)
	return e.startProc(ctx, "certmail-worker", []string{bin}, envv, `"msg":"worker started"`)
}

// startNaive runs the naive asynq worker (this program as a child).
func (e *env) startNaive(ctx context.Context, s *sims, perQueue int, taskCheck time.Duration, profile ...string) (*proc, error) {
	args := []string{e.self, "-child", "naive-worker", e.addr, s.o.URL(), s.d.URL(), strconv.Itoa(perQueue), taskCheck.String()}
	var envv []string
	if len(profile) > 0 && profile[0] != "" {
		envv = append(envv, "CERTMAIL_BENCH_CPUPROFILE="+profile[0])
	}
	return e.startProc(ctx, "naive-worker", args, envv, "naive worker started")
}

// drain waits until n tasks are completed and returns the throughput from
// the first completion seen to the last (the worker's start is left out).
func (e *env) drain(ctx context.Context, n int, within time.Duration) (float64, error) {
	deadline := time.Now().Add(within)
	var t0 time.Time
	var c0 int64
	for {
		c, err := e.count(ctx, "completed")
		if err != nil {
			return 0, err
		}
		now := time.Now()
		if c > 0 && t0.IsZero() {
			t0, c0 = now, c
		}
		if c >= int64(n) {
			if c == c0 {
				return 0, errors.New("every task completed before the first poll: use more tasks")
			}
			return float64(c-c0) / now.Sub(t0).Seconds(), nil
		}
		if a, _ := e.count(ctx, "archived"); a > 0 {
			return 0, fmt.Errorf("%d tasks archived", a)
		}
		if now.After(deadline) {
			r, _ := e.count(ctx, "retry")
			return 0, fmt.Errorf("only %d of %d completed within %s (%d in retry)", c, n, within, r)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// cpu is the CPU time each side spent on one throughput run, from the
// worker's start to the last completion: the worker process (its whole
// life so far), redis-server, and this program (the simulators, the
// bench's own polls).
type cpu struct {
	worker, redis, sims time.Duration
	// usec and calls are Redis's own time and call count per command
	// (INFO commandstats; commands run inside scripts are counted
	// under their own names too) over the run.
	usec, calls map[string]int64
}

// perTask formats c divided by n tasks in µs.
func (c cpu) perTask(n int) string {
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	out := fmt.Sprintf("CPU µs/task: worker %.0f, redis %.0f, simulators+bench %.0f", us(c.worker), us(c.redis), us(c.sims))
	names := make([]string, 0, len(c.usec))
	for name := range c.usec {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return int(c.usec[b] - c.usec[a]) })
	var parts []string
	for _, name := range names[:min(len(names), 8)] {
		parts = append(parts, fmt.Sprintf("%s %.2f×/%.1fµs", name, float64(c.calls[name])/float64(n), float64(c.usec[name])/float64(n)))
	}
	return out + "; redis commands per task (calls/time): " + strings.Join(parts, ", ")
}

// commandUsec reads INFO commandstats' usec per command, leaving out the
// bench's own INFO.
func (e *env) commandUsec(ctx context.Context) (usec, calls map[string]int64, err error) {
	s, err := e.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, nil, err
	}
	usec, calls = map[string]int64{}, map[string]int64{}
	for l := range strings.SplitSeq(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(l), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				usec[name], _ = strconv.ParseInt(v, 10, 64)
			}
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls[name], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return usec, calls, nil
}

// procCPU reads a process's user+system time from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in ")".
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// redisCPU reads redis-server's used_cpu_user + used_cpu_sys.
func (e *env) redisCPU(ctx context.Context) (time.Duration, error) {
	s, err := e.rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for l := range strings.SplitSeq(s, "\n") {
		name, v, ok := strings.Cut(strings.TrimSpace(l), ":")
		if ok && (name == "used_cpu_user" || name == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second)), nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// throughput runs one worker over n pre-filled tasks.
func (e *env) throughput(ctx context.Context, naive bool, n, perQueue int, delay time.Duration, profile string) (float64, cpu, error) {
	if err := e.flush(ctx); err != nil {
		return 0, cpu{}, err
	}
	s := newSims(delay)
	defer s.Close()
	if err := e.fill(ctx, n); err != nil {
		return 0, cpu{}, err
	}
	r0, err := e.redisCPU(ctx)
	if err != nil {
		return 0, cpu{}, err
	}
	s0 := selfCPU()
	u0, n0, err := e.commandUsec(ctx)
	if err != nil {
		return 0, cpu{}, err
	}
	var p *proc
	if naive {
		p, err = e.startNaive(ctx, s, perQueue, 0, profile)
	} else {
		p, err = e.startCertmail(ctx, s, perQueue, profile, 4*time.Second)
	}
	if err != nil {
		return 0, cpu{}, err
	}
	defer p.stop()
	rate, err := e.drain(ctx, n, 10*time.Minute)
	if err != nil {
		return 0, cpu{}, err
	}
	var c cpu
	c.sims = selfCPU() - s0
	c.worker, _ = procCPU(p.cmd.Process.Pid)
	r1, _ := e.redisCPU(ctx)
	c.redis = r1 - r0
	if u1, n1, err := e.commandUsec(ctx); err == nil {
		c.usec, c.calls = map[string]int64{}, map[string]int64{}
		for name, v := range u1 {
			if d := v - u0[name]; d > 0 {
				c.usec[name], c.calls[name] = d, n1[name]-n0[name]
			}
		}
	}
	return rate, c, nil
}

// ---------------------------------------------------------------- figures

func (e *env) figWorker(ctx context.Context) (result, error) {
	r := result{title: fmt.Sprintf("1. worker throughput: %d tasks (half OpenSRS, half DigiCert), concurrency %d per queue, simulators answering at once, protections off",
		e.p.tasks, e.p.concurrency)}
	var cm, nv []float64
	for i := range e.p.runs {
		prof, naiveProf := "", ""
		if i == 0 && e.p.cpuprofile != "" {
			prof, naiveProf = e.p.cpuprofile, e.p.cpuprofile+".naive"
		}
		n, ncpu, err := e.throughput(ctx, true, e.p.tasks, e.p.concurrency, 0, naiveProf)
		if err != nil {
			return r, fmt.Errorf("naive: %w", err)
		}
		c, ccpu, err := e.throughput(ctx, false, e.p.tasks, e.p.concurrency, 0, prof)
		if err != nil {
			return r, fmt.Errorf("certmail worker: %w", err)
		}
		cm, nv = append(cm, c), append(nv, n)
		r.runs = append(r.runs, fmt.Sprintf("run %d: certmail %.0f tasks/s, naive %.0f tasks/s, ratio %.2f", i+1, c, n, c/n),
			"  certmail "+ccpu.perTask(e.p.tasks), "  naive    "+ncpu.perTask(e.p.tasks))
	}
	c, n := median(cm), median(nv)
	r.rows = append(r.rows, row{"worker throughput (tasks/s)", fmt.Sprintf("%.0f", c), fmt.Sprintf("%.0f (naive asynq worker)", n),
		fmt.Sprintf("%.2f", c/n), "≥ 0.8"})
	return r, nil
}

func (e *env) figEnqueue(ctx context.Context) (result, error) {
	r := result{title: fmt.Sprintf("2. enqueue batch of %d lines vs raw asynq Client.Enqueue from %d goroutines (both read the same JSON Lines file, in their own process)",
		e.p.enqLines, e.p.rawEnqueuers)}
	file := filepath.Join(e.dir, "batch.jsonl")
	var sb strings.Builder
	for i := range e.p.enqLines {
		sb.WriteString(line(i))
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(file, []byte(sb.String()), 0o600); err != nil {
		return r, err
	}
	timed := func(args []string, envv []string) (float64, error) {
		if err := e.flush(ctx); err != nil {
			return 0, err
		}
		c := exec.CommandContext(ctx, args[0], args[1:]...)
		c.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, envv...)
		var out strings.Builder
		c.Stdout, c.Stderr = io.Discard, &out
		start := time.Now()
		if err := c.Run(); err != nil {
			return 0, fmt.Errorf("%s: %v: %s", filepath.Base(args[0]), err, out.String())
		}
		took := time.Since(start)
		n, err := e.count(ctx, "pending")
		if err != nil {
			return 0, err
		}
		if n != int64(e.p.enqLines) {
			return 0, fmt.Errorf("%s: %d tasks pending, want %d", filepath.Base(args[0]), n, e.p.enqLines)
		}
		return float64(e.p.enqLines) / took.Seconds(), nil
	}
	var cm, rw []float64
	for i := range e.p.runs {
		raw, err := timed([]string{e.self, "-child", "raw-enqueue", e.addr, file, strconv.Itoa(e.p.rawEnqueuers)}, nil)
		if err != nil {
			return r, err
		}
		args := []string{e.enq, "batch", file}
		if e.p.enqueueConc > 0 {
			args = append(args, "--concurrency", strconv.Itoa(e.p.enqueueConc))
		}
		c, err := timed(args, []string{"REDIS_URL=" + e.url})
		if err != nil {
			return r, err
		}
		cm, rw = append(cm, c), append(rw, raw)
		r.runs = append(r.runs, fmt.Sprintf("run %d: enqueue batch %.0f tasks/s, raw asynq %.0f tasks/s, ratio %.2f", i+1, c, raw, c/raw))
	}
	c, raw := median(cm), median(rw)
	r.rows = append(r.rows, row{"enqueue batch (tasks/s, process start to exit)", fmt.Sprintf("%.0f", c),
		fmt.Sprintf("%.0f (raw asynq ×%d)", raw, e.p.rawEnqueuers), fmt.Sprintf("%.2f", c/raw), "≥ 1.0"})
	return r, nil
}

func (e *env) figLatency(ctx context.Context) (result, error) {
	ideal := float64(e.p.latConc) / e.p.latency.Seconds()
	r := result{title: fmt.Sprintf("3. latency-bound: %d tasks, provider latency %s, concurrency %d (%d per queue), ideal %.0f tasks/s",
		e.p.latTasks, e.p.latency, e.p.latConc, e.p.latConc/2, ideal)}
	var cm, nv []float64
	for i := range e.p.runs {
		n, ncpu, err := e.throughput(ctx, true, e.p.latTasks, e.p.latConc/2, e.p.latency, "")
		if err != nil {
			return r, fmt.Errorf("naive: %w", err)
		}
		c, ccpu, err := e.throughput(ctx, false, e.p.latTasks, e.p.latConc/2, e.p.latency, "")
		if err != nil {
			return r, err
		}
		cm, nv = append(cm, c), append(nv, n)
		r.runs = append(r.runs, fmt.Sprintf("run %d: certmail %.0f tasks/s, ratio %.2f of the ideal; naive asynq worker %.0f tasks/s (%.2f)", i+1, c, c/ideal, n, n/ideal),
			"  certmail "+ccpu.perTask(e.p.latTasks), "  naive    "+ncpu.perTask(e.p.latTasks))
	}
	c, n := median(cm), median(nv)
	r.rows = append(r.rows,
		row{"latency-bound throughput (tasks/s)", fmt.Sprintf("%.0f", c), fmt.Sprintf("%.0f (ideal)", ideal), fmt.Sprintf("%.2f", c/ideal), "≥ 0.9"},
		row{"latency-bound, naive worker (tasks/s)", fmt.Sprintf("%.0f", c), fmt.Sprintf("%.0f (naive asynq worker)", n), fmt.Sprintf("%.2f", c/n), "—"})
	return r, nil
}

// commandstats sums INFO commandstats calls, leaving out INFO itself (the
// bench's own reads).
func (e *env) commandstats(ctx context.Context) (int64, map[string]int64, error) {
	s, err := e.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, nil, err
	}
	var total int64
	per := map[string]int64{}
	for l := range strings.SplitSeq(s, "\n") {
		l = strings.TrimSpace(l)
		name, rest, ok := strings.Cut(l, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
				per[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return total, per, nil
}

// idleAndPickup starts a worker on an empty Redis, counts its Redis
// commands while idle, then enqueues tasks one at a time at random moments
// and measures each from its enqueue to its provider request.
func (e *env) idleAndPickup(ctx context.Context, naive bool) (p50, p99, cmdsPerSec float64, top string, err error) {
	if err := e.flush(ctx); err != nil {
		return 0, 0, 0, "", err
	}
	s := newSims(0)
	defer s.Close()
	var p *proc
	if naive {
		p, err = e.startNaive(ctx, s, e.p.concurrency, e.p.naiveCheck)
	} else {
		p, err = e.startCertmail(ctx, s, e.p.concurrency, "", 0)
	}
	if err != nil {
		return 0, 0, 0, "", err
	}
	defer p.stop()
	time.Sleep(2 * time.Second) // past the start-up commands
	_ = e.rdb.ConfigResetStat(ctx).Err()
	before, perBefore, err := e.commandstats(ctx)
	if err != nil {
		return 0, 0, 0, "", err
	}
	start := time.Now()
	time.Sleep(e.p.idle)
	after, perAfter, err := e.commandstats(ctx)
	if err != nil {
		return 0, 0, 0, "", err
	}
	secs := time.Since(start).Seconds()
	cmdsPerSec = float64(after-before) / secs
	type kv struct {
		k string
		v int64
	}
	var kvs []kv
	for k, v := range perAfter {
		if d := v - perBefore[k]; d > 0 {
			kvs = append(kvs, kv{k, d})
		}
	}
	slices.SortFunc(kvs, func(a, b kv) int { return int(b.v - a.v) })
	var parts []string
	for _, x := range kvs[:min(len(kvs), 5)] {
		parts = append(parts, fmt.Sprintf("%s %.1f/s", x.k, float64(x.v)/secs))
	}
	top = strings.Join(parts, ", ")

	c := asynq.NewClientFromRedisClient(e.rdb)
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	sent := map[string]time.Time{}
	for i := range e.p.pickups {
		time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond)
		pl := payload(i)
		t, err := tasks.NewTask(pl, opts, uuid.NewString())
		if err != nil {
			return 0, 0, 0, "", err
		}
		sent[pl.Order()] = time.Now()
		if _, err := c.EnqueueContext(ctx, t); err != nil {
			return 0, 0, 0, "", err
		}
	}
	var lat []float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		lat = lat[:0]
		for _, q := range s.o.Requests() {
			if at, ok := sent[q.OrderID]; ok {
				lat = append(lat, float64(q.Time.Sub(at).Microseconds())/1000)
			}
		}
		for _, q := range s.d.Requests() {
			if at, ok := sent[q.OrderID]; ok {
				lat = append(lat, float64(q.Time.Sub(at).Microseconds())/1000)
			}
		}
		if len(lat) >= len(sent) {
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, 0, "", fmt.Errorf("only %d of %d tasks reached the provider", len(lat), len(sent))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return percentile(lat, 0.5), percentile(lat, 0.99), cmdsPerSec, top, nil
}

func (e *env) figPickup(ctx context.Context) (result, error) {
	r := result{title: fmt.Sprintf("4. pickup latency of an idle worker (enqueue to provider request), %d tasks enqueued one by one 0.3-1 s apart; Redis commands/s of the idle worker over %s (INFO commandstats)",
		e.p.pickups, e.p.idle)}
	var c50, c99, ccmd, n50, n99, ncmd []float64
	for i := range e.p.runs {
		a50, a99, acmd, atop, err := e.idleAndPickup(ctx, false)
		if err != nil {
			return r, fmt.Errorf("certmail worker: %w", err)
		}
		b50, b99, bcmd, btop, err := e.idleAndPickup(ctx, true)
		if err != nil {
			return r, fmt.Errorf("naive: %w", err)
		}
		c50, c99, ccmd = append(c50, a50), append(c99, a99), append(ccmd, acmd)
		n50, n99, ncmd = append(n50, b50), append(n99, b99), append(ncmd, bcmd)
		r.runs = append(r.runs, fmt.Sprintf("run %d: certmail p50 %.0f ms p99 %.0f ms, idle %.1f cmds/s (%s); naive (asynq defaults) p50 %.0f ms p99 %.0f ms, idle %.1f cmds/s (%s)",
			i+1, a50, a99, acmd, atop, b50, b99, bcmd, btop))
	}
	r.rows = append(r.rows,
		row{"pickup p50 (ms)", fmt.Sprintf("%.0f", median(c50)), fmt.Sprintf("%.0f (naive, asynq defaults)", median(n50)), fmt.Sprintf("%.2f", median(c50)/median(n50)), "≤ 150 ms"},
		row{"pickup p99 (ms)", fmt.Sprintf("%.0f", median(c99)), fmt.Sprintf("%.0f (naive, asynq defaults)", median(n99)), fmt.Sprintf("%.2f", median(c99)/median(n99)), "—"},
		row{"idle Redis commands/s", fmt.Sprintf("%.1f", median(ccmd)), fmt.Sprintf("%.1f (naive, asynq defaults)", median(ncmd)), fmt.Sprintf("%.2f", median(ccmd)/median(ncmd)), "a few"},
	)
	return r, nil
}

func (e *env) rssRun(ctx context.Context, naive bool) (int64, int64, error) {
	if err := e.flush(ctx); err != nil {
		return 0, 0, err
	}
	s := newSims(e.p.latency)
	defer s.Close()
	if err := e.fill(ctx, e.p.rssTasks); err != nil {
		return 0, 0, err
	}
	var p *proc
	var err error
	if naive {
		p, err = e.startNaive(ctx, s, e.p.latConc/2, 0)
	} else {
		p, err = e.startCertmail(ctx, s, e.p.latConc/2, "", 0)
	}
	if err != nil {
		return 0, 0, err
	}
	defer p.stop()
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-time.After(e.p.rssFor):
	}
	h, err := p.hwm()
	done, _ := e.count(ctx, "completed")
	return h, done, err
}

func (e *env) figRSS(ctx context.Context) (result, error) {
	r := result{title: fmt.Sprintf("5. peak RSS (VmHWM) of the worker process: %d pending tasks, concurrency %d, provider latency %s, read after %s",
		e.p.rssTasks, e.p.latConc, e.p.latency, e.p.rssFor)}
	var cm, nv []float64
	const mib = 1 << 20
	for i := range e.p.runs {
		c, cdone, err := e.rssRun(ctx, false)
		if err != nil {
			return r, fmt.Errorf("certmail worker: %w", err)
		}
		n, ndone, err := e.rssRun(ctx, true)
		if err != nil {
			return r, fmt.Errorf("naive: %w", err)
		}
		cm, nv = append(cm, float64(c)/mib), append(nv, float64(n)/mib)
		r.runs = append(r.runs, fmt.Sprintf("run %d: certmail %.1f MiB (%d tasks done), naive %.1f MiB (%d tasks done)", i+1, float64(c)/mib, cdone, float64(n)/mib, ndone))
	}
	c, n := median(cm), median(nv)
	r.rows = append(r.rows, row{"peak RSS (MiB)", fmt.Sprintf("%.1f", c), fmt.Sprintf("%.1f (naive asynq worker)", n), fmt.Sprintf("%.2f", c/n), "≤ 100 MiB"})
	return r, nil
}

// ---------------------------------------------------------------- children

func child(mode string, args []string) int {
	var err error
	switch mode {
	case "naive-worker":
		err = naiveWorker(args)
	case "raw-enqueue":
		err = rawEnqueue(args)
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 1
	}
	return 0
}

// naiveWorker is the baseline: one asynq server per queue (the shape of
// certmail's worker), a handler that decodes the payload, makes the one
// provider call with the same client, and returns.
// Args: redis addr, OpenSRS URL, DigiCert URL, concurrency per queue,
// TaskCheckInterval (0s: asynq's default).
func naiveWorker(args []string) error {
	if len(args) != 5 {
		return errors.New("naive-worker: want addr opensrs-url digicert-url concurrency task-check")
	}
	if path := os.Getenv("CERTMAIL_BENCH_CPUPROFILE"); path != "" {
		// The same window as the certmail worker's (cmd/worker/benchprof.go).
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		time.AfterFunc(4*time.Second, func() { pprof.StopCPUProfile(); f.Close() })
	}
	conc, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	check, err := time.ParseDuration(args[4])
	if err != nil {
		return err
	}
	oc, err := opensrs.New(opensrs.WithBaseURL(args[1]), opensrs.WithCredentials(simUser, simKey), opensrs.WithMaxConns(conc), opensrs.WithTimeout(90*time.Second))
	if err != nil {
		return err
	}
	dc, err := digicert.New(digicert.WithBaseURL(args[2]), digicert.WithAPIKey(dcKey), digicert.WithMaxConns(conc), digicert.WithTimeout(90*time.Second))
	if err != nil {
		return err
	}
	clients := map[providers.Name]providers.Resender{providers.OpenSRS: oc, providers.DigiCert: dc}
	h := asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		p, err := tasks.Decode(t.Type(), t.Payload())
		if err != nil {
			return err
		}
		_, err = clients[p.Provider()].Resend(ctx, p.Request())
		return err
	})
	rdb := redis.NewClient(&redis.Options{Addr: args[0]})
	defer rdb.Close()
	var servers []*asynq.Server
	for _, q := range queues {
		s := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: conc, Queues: map[string]int{q: 1},
			TaskCheckInterval: check, LogLevel: asynq.WarnLevel})
		if err := s.Start(h); err != nil {
			return err
		}
		servers = append(servers, s)
	}
	fmt.Println("naive worker started")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	for _, s := range servers {
		s.Stop()
	}
	for _, s := range servers {
		s.Shutdown()
	}
	return nil
}

// rawEnqueue is the enqueue baseline: read the JSON Lines file, build each
// task (validated, as enqueue does) and Client.Enqueue it from n goroutines.
// Args: redis addr, file, goroutines.
func rawEnqueue(args []string) error {
	if len(args) != 3 {
		return errors.New("raw-enqueue: want addr file goroutines")
	}
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	f, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer f.Close()
	rdb := redis.NewClient(&redis.Options{Addr: args[0], PoolSize: n})
	defer rdb.Close()
	c := asynq.NewClientFromRedisClient(rdb)
	opts := tasks.DefaultOptions()
	opts.DedupWindow = 0
	lines := make(chan []byte, 256)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for l := range lines {
				p, err := tasks.DecodeLine(l)
				if err == nil {
					var t *asynq.Task
					if t, err = tasks.NewTask(p, opts, uuid.NewString()); err == nil {
						_, err = c.Enqueue(t)
					}
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines <- slices.Clone(sc.Bytes())
	}
	close(lines)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return sc.Err()
}

func numCPU() int { return runtime.NumCPU() }
