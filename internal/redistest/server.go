package redistest

import (
	"errors"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// NoLaunchEnv names the variable that, when set, forbids this package to
// start any redis-server of its own even when the binary is on PATH: the
// suite then behaves as on a machine that only has REDIS_URL, which is how
// CI's second run (and a developer reproducing it) checks that promise.
const NoLaunchEnv = "CERTMAIL_TEST_NO_LAUNCH"

// errNoLaunch says why no redis-server of our own can be started.
var errNoLaunch = errors.New("starting redis-server is disabled (" + NoLaunchEnv + " is set)")

// lookServer finds the redis-server binary this package may launch.
func lookServer() (string, error) {
	if os.Getenv(NoLaunchEnv) != "" {
		return "", errNoLaunch
	}
	return exec.LookPath("redis-server")
}

// Server is a real Redis that one test owns and may stop and start again
// (readiness and reconnection tests): the shared server must stay up for
// every other test, so stopping it is never an option.
//
// It is a redis-server of the test's own when the binary can be launched
// (Restartable), or else a Proxy in front of a database of the shared real
// server: Stop then closes the proxy's listener and cuts its connections,
// which is what a client sees of a stopped server, except that the data
// survives (a stopped redis-server of ours, run without persistence, loses
// it). Tests that rely on either must not.
type Server struct {
	t   testing.TB
	url string // with the database

	mu    sync.Mutex
	proc  *proc // own server while running
	bin   string
	args  []string
	addr  string
	proxy *Proxy // proxy mode
}

// Own starts a redis-server of the test's own on a free loopback port, with
// extra command-line arguments (such as "--requirepass", pw), stopped with
// the test. It returns an error, never failing the test, when no server can
// be launched, so that the caller can fall back to the shared one.
func Own(t testing.TB, args ...string) (*Server, error) {
	t.Helper()
	bin, err := lookServer()
	if err != nil {
		return nil, err
	}
	s := &Server{t: t, bin: bin}
	dir := t.TempDir()
	t.Cleanup(s.Stop)
	err = retryPorts(func() error {
		port, err := FreePort()
		if err != nil {
			return err
		}
		s.addr = "127.0.0.1:" + strconv.Itoa(port)
		s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir}, args...)
		s.url = "redis://" + s.addr + "/0"
		return s.launch()
	})
	if err != nil {
		return nil, err
	}
	markReal(t)
	return s, nil
}

// Restartable returns a real Redis the test may Stop and Start: a server of
// its own when redis-server can be launched, else a Proxy in front of an
// empty database of the shared real server (REDIS_URL), so that the test
// also runs where only REDIS_URL is available. Like Real, it skips or (under
// CERTMAIL_REQUIRE_REAL_REDIS) fails when there is no real Redis at all.
func Restartable(t testing.TB) *Server {
	t.Helper()
	if s, err := Own(t); err == nil {
		return s
	}
	return proxied(t)
}

// proxied is Restartable's fallback: a Proxy over a database of the shared
// real server.
func proxied(t testing.TB) *Server {
	t.Helper()
	b := Real(t)
	u, err := url.Parse(b.URL)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	p := NewProxy(t, u.Host)
	u.Host = p.Addr()
	return &Server{t: t, url: u.String(), addr: p.Addr(), proxy: p}
}

// URL is the server's redis:// URL, database included.
func (s *Server) URL() string { return s.url }

// Addr is the host:port clients connect to.
func (s *Server) Addr() string { return s.addr }

// Backend describes the server as a Backend (Name "redis").
func (s *Server) Backend() Backend { return Backend{Name: "redis", URL: s.url} }

// Client returns a go-redis client for the server, closed with the test.
func (s *Server) Client(t testing.TB) *redis.Client { return s.Backend().Client(t) }

// Stop makes the server unreachable: its process is killed, or the proxy
// stops listening. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.proxy != nil {
		s.proxy.Stop()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc.kill()
	s.proc = nil
}

// Start brings a stopped server back on the same address and waits until
// it answers PING; it fails the test if it cannot.
func (s *Server) Start() {
	s.t.Helper()
	var err error
	if s.proxy != nil {
		err = s.proxy.Start()
	} else {
		err = s.launch()
	}
	if err != nil {
		s.t.Fatalf("redistest: restart %s: %v", s.addr, err)
	}
}

func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return nil
	}
	p, err := launch(s.bin, s.args, "", nil, s.addr)
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}
