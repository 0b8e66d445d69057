// Package redistest gives tests a Redis to talk to, twice over: an in-process
// miniredis, so that `go test ./...` passes on a machine with Go alone, and a
// real redis-server, because miniredis differs from Redis in ways that matter
// to a queue (TTL expiry, Lua, timing).
//
// The real server is, in order of preference, the one named by
// CERTMAIL_TEST_REDIS_URL, a redis-server this package starts on a free
// loopback port when the binary is on PATH (and CERTMAIL_TEST_NO_LAUNCH is
// not set), or the one named by REDIS_URL. A test that must stop and restart
// Redis takes a Server (Restartable) instead: its own redis-server, or a
// Proxy it can cut when only REDIS_URL is available.
// Tests flush databases 1 to 15 of a server named by URL: never point either
// variable at a Redis whose data matters. Each test gets its own logical
// database and finds it empty, so parallel tests never see each other's keys.
//
// CI sets CERTMAIL_REQUIRE_REAL_REDIS=1: a missing redis-server then fails the
// test instead of silently running only the miniredis half, and every test
// that ran against the real server appends a line to the file named by
// CERTMAIL_REAL_REDIS_LOG so that CI can prove that half ran.
//
// Topologies are launched from the same binary: NewCluster (and the
// package-wide SharedCluster) start a 3-master Redis Cluster. Without
// redis-server they skip, unless CERTMAIL_REQUIRE_TOPOLOGIES is set (CI),
// which makes them fail.
package redistest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Backend is one Redis a test runs against.
type Backend struct {
	// Name is "miniredis" or "redis"; use it as the subtest name.
	Name string
	// URL is a redis:// URL including the database number.
	URL string
	// Mini is set for miniredis, so tests can FastForward TTLs.
	Mini *miniredis.Miniredis
	// Cluster holds the seed addresses of a Redis Cluster (Name "cluster");
	// URL is then empty.
	Cluster []string
}

// Universal returns a go-redis client for the backend, a cluster client
// for a cluster, closed with the test.
func (b Backend) Universal(t testing.TB) redis.UniversalClient {
	t.Helper()
	if b.Cluster != nil {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: b.Cluster})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	return b.Client(t)
}

// Real reports whether the backend is a real redis-server.
func (b Backend) Real() bool { return b.Mini == nil }

// Client returns a go-redis client for the backend, closed with the test.
func (b Backend) Client(t testing.TB) *redis.Client {
	t.Helper()
	if b.Cluster != nil {
		t.Fatalf("redistest: backend %s is a cluster: use Universal", b.Name)
	}
	opt, err := redis.ParseURL(b.URL)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Each runs fn once per backend as subtests named "miniredis" and "redis".
func Each(t *testing.T, fn func(t *testing.T, b Backend)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) { fn(t, Mini(t)) })
	t.Run("redis", func(t *testing.T) { fn(t, Real(t)) })
}

// EachWithCluster runs fn as Each does, then once more on a Redis Cluster
// of the test's own (subtest "cluster"; see NewCluster): for tests written
// against Backend.Universal.
func EachWithCluster(t *testing.T, fn func(t *testing.T, b Backend)) {
	t.Helper()
	Each(t, fn)
	t.Run("cluster", func(t *testing.T) { fn(t, NewCluster(t).Backend()) })
}

// Mini starts a fresh miniredis for the test.
func Mini(t testing.TB) Backend {
	t.Helper()
	m := miniredis.RunT(t)
	return Backend{Name: "miniredis", URL: "redis://" + m.Addr() + "/0", Mini: m}
}

// Real returns an empty database on a real redis-server, or skips the test
// when none can be had and CERTMAIL_REQUIRE_REAL_REDIS is not set.
func Real(t testing.TB) Backend {
	t.Helper()
	base, err := server()
	if err != nil {
		if os.Getenv("CERTMAIL_REQUIRE_REAL_REDIS") != "" {
			t.Fatalf("redistest: real Redis required but unavailable: %v", err)
		}
		t.Skipf("redistest: no real Redis (%v); install redis-server to run this half", err)
	}
	db := acquireDB(t)
	u := fmt.Sprintf("%s/%d", base, db)
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("redistest: flush db %d: %v", db, err)
	}
	markReal(t)
	return Backend{Name: "redis", URL: u}
}

// Databases are handed out one per test; 16 is Redis's default count.
var dbs = make(chan int, 16)

func init() {
	for i := 1; i < 16; i++ { // db 0 stays untouched for humans poking around
		dbs <- i
	}
}

func acquireDB(t testing.TB) int {
	select {
	case db := <-dbs:
		t.Cleanup(func() { dbs <- db })
		return db
	case <-time.After(2 * time.Minute):
		t.Fatalf("redistest: no free database after 2m")
		return 0
	}
}

var (
	once    sync.Once
	baseURL string
	baseErr error
	// sharedProc is the redis-server start launched, if any.
	sharedProc *proc
)

// server returns the base URL (without database) of the real server: the
// one CERTMAIL_TEST_REDIS_URL names, else a redis-server of our own, else
// the one REDIS_URL names. A server given by URL is shared by every test
// package running at once, so each process takes an exclusive lock on it
// for its lifetime: packages then take turns instead of flushing each
// other's databases.
func server() (string, error) {
	once.Do(func() {
		if u := os.Getenv("CERTMAIL_TEST_REDIS_URL"); u != "" {
			baseURL, baseErr = shared(u)
			return
		}
		baseURL, baseErr = start()
		if baseErr != nil {
			if u := os.Getenv("REDIS_URL"); u != "" {
				baseURL, baseErr = shared(u)
			}
		}
	})
	return baseURL, baseErr
}

// shared locks and returns the server named by raw, without its database.
func shared(raw string) (string, error) {
	pu, err := url.Parse(raw)
	if err != nil || (pu.Scheme != "redis" && pu.Scheme != "rediss") {
		return "", fmt.Errorf("test Redis URL %q: want redis://host:port", pu.Redacted())
	}
	pu.Path = ""
	if err := lockServer(pu.Host); err != nil {
		return "", err
	}
	return pu.String(), nil
}

// Addr returns host:port of the real server (starting it if needed).
func Addr() (string, error) {
	u, err := server()
	if err != nil {
		return "", err
	}
	pu, err := url.Parse(u)
	if err != nil {
		return "", err
	}
	return pu.Host, nil
}

func start() (string, error) {
	bin, err := lookServer()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "certmail-redis-")
	if err != nil {
		return "", err
	}
	var addr string
	err = retryPorts(func() error {
		port, err := FreePort()
		if err != nil {
			return err
		}
		addr = fmt.Sprintf("127.0.0.1:%d", port)
		sharedProc, err = launch(bin, []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--databases", "16", "--maxmemory-policy", "noeviction"}, "", nil, addr)
		return err
	})
	if err != nil {
		return "", err
	}
	return "redis://" + addr, nil
}

// Stop ends the redis-server and the shared cluster this package started,
// if any. Call it from
// TestMain after m.Run; a leftover server is also killed when its parent
// test binary exits only if the caller does so, hence the helper.
func Stop() {
	stopShared()
	sharedProc.kill()
}

// Main is a TestMain helper: it runs the tests and stops the server.
func Main(m interface{ Run() int }) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

func markReal(t testing.TB) {
	p := os.Getenv("CERTMAIL_REAL_REDIS_LOG")
	if p == "" {
		return
	}
	_ = os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, t.Name())
}
