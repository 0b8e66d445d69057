package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the name the launched Sentinels monitor.
const SentinelMaster = "certmail"

// SentinelSet is a Redis primary, one replica and three Sentinels of the
// test's own on free loopback ports (quorum 2, down after 1 s), stopped with
// the test. Nothing persists to disk: a killed server comes back empty and
// resyncs from the primary of the moment.
type SentinelSet struct {
	t         testing.TB
	bin       string
	servers   []*Server // the first started as primary, the second as its replica
	sentinels []string  // addresses
	procs     []*proc

	mu     sync.Mutex
	killed *Server
}

// StartSentinel launches the set and waits until every Sentinel sees the
// replica and the two other Sentinels, so that a failover can be agreed.
// Without redis-server (or with CERTMAIL_TEST_NO_LAUNCH set) it skips the
// test, or fails it when CERTMAIL_REQUIRE_TOPOLOGIES is set.
func StartSentinel(t testing.TB) *SentinelSet {
	t.Helper()
	bin, err := lookServer()
	if err != nil {
		topologyUnavailable(t, "Redis Sentinel", err)
	}
	s := &SentinelSet{t: t, bin: bin}
	primary, err := Own(t)
	if err != nil {
		t.Fatalf("redistest: sentinel primary: %v", err)
	}
	host, port := splitAddr(t, primary.Addr())
	replica, err := Own(t, "--replicaof", host, port)
	if err != nil {
		t.Fatalf("redistest: sentinel replica: %v", err)
	}
	s.servers = []*Server{primary, replica}
	dir := t.TempDir()
	for i := range 3 {
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("sentinel-%d.log", i))) // read when a test fails
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		t.Cleanup(func() { _ = logf.Close() })
		var addr string
		err = retryPorts(func() error {
			p, err := FreePort()
			if err != nil {
				return err
			}
			conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", i))
			body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
				"sentinel monitor %s %s %s 2\n"+
				"sentinel down-after-milliseconds %[3]s 1000\n"+
				"sentinel failover-timeout %[3]s 5000\n"+
				"sentinel parallel-syncs %[3]s 1\n", p, dir, SentinelMaster, host, port)
			if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
				return err
			}
			addr = "127.0.0.1:" + strconv.Itoa(p)
			sp, err := launch(s.bin, []string{conf, "--sentinel"}, dir, logf, addr)
			if err == nil {
				s.procs = append(s.procs, sp)
			}
			return err
		})
		if err != nil {
			t.Fatalf("redistest: start sentinel: %v", err)
		}
		s.sentinels = append(s.sentinels, addr)
	}
	t.Cleanup(func() {
		for _, p := range s.procs {
			p.kill()
		}
	})
	s.waitSeen(primary.Addr(), 30*time.Second)
	return s
}

func splitAddr(t testing.TB, addr string) (string, string) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("redistest: bad address %q", addr)
	}
	return addr[:i], addr[i+1:]
}

// URL is the redis-sentinel:// URL of database db.
func (s *SentinelSet) URL(db int) string {
	return fmt.Sprintf("redis-sentinel://%s/%d?master=%s", strings.Join(s.sentinels, ","), db, SentinelMaster)
}

// SentinelAddrs are the Sentinels' addresses.
func (s *SentinelSet) SentinelAddrs() []string { return s.sentinels }

// Primary is the address the Sentinels currently name as primary.
func (s *SentinelSet) Primary() string {
	s.t.Helper()
	var last error
	for _, a := range s.sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: a, MaxRetries: -1})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
		cancel()
		_ = c.Close()
		if err == nil && len(r) == 2 {
			return r[0] + ":" + r[1]
		}
		last = err
	}
	s.t.Fatalf("redistest: no Sentinel names a primary: %v", last)
	return ""
}

// server returns the launched server listening on addr.
func (s *SentinelSet) server(addr string) *Server {
	for _, sv := range s.servers {
		if sv.Addr() == addr {
			return sv
		}
	}
	s.t.Fatalf("redistest: %s is none of the launched servers", addr)
	return nil
}

// KillPrimary kills the current primary with SIGKILL and returns its
// address.
func (s *SentinelSet) KillPrimary() string {
	s.t.Helper()
	p := s.server(s.Primary())
	p.Stop()
	s.mu.Lock()
	s.killed = p
	s.mu.Unlock()
	return p.Addr()
}

// WaitPromotion waits until the Sentinels name a primary other than old
// and it answers as a master, and returns its address.
func (s *SentinelSet) WaitPromotion(old string, timeout time.Duration) string {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if p := s.Primary(); p != old && role(p) == "master" {
			return p
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: no replica promoted within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RestartKilled starts the killed server again on its address (empty, as
// a primary of nothing) and waits until the Sentinels have turned it into
// a replica of the current primary that has caught up (master_link_status
// up).
func (s *SentinelSet) RestartKilled(timeout time.Duration) string {
	s.t.Helper()
	s.mu.Lock()
	k := s.killed
	s.killed = nil
	s.mu.Unlock()
	if k == nil {
		s.t.Fatalf("redistest: no killed server to restart")
	}
	k.Start()
	deadline := time.Now().Add(timeout)
	for {
		if info(k.Addr(), "master_link_status") == "up" {
			return k.Addr()
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: %s did not become a replica within %s", k.Addr(), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Replica is the address of the server that is not the current primary.
func (s *SentinelSet) Replica() string {
	p := s.Primary()
	for _, sv := range s.servers {
		if sv.Addr() != p {
			return sv.Addr()
		}
	}
	return ""
}

// role is the "role" field of INFO replication, or "" when unreachable.
func role(addr string) string { return info(addr, "role") }

func info(addr, field string) string {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// waitSeen waits until every Sentinel names primary, counts one replica
// and two other Sentinels, and the replica's link is up.
func (s *SentinelSet) waitSeen(primary string, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := info(s.servers[1].Addr(), "master_link_status") == "up"
		for _, a := range s.sentinels {
			if !ok {
				break
			}
			c := redis.NewSentinelClient(&redis.Options{Addr: a, MaxRetries: -1})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			m, err := c.Master(ctx, SentinelMaster).Result()
			cancel()
			_ = c.Close()
			ok = err == nil && m["ip"]+":"+m["port"] == primary && m["num-slaves"] == "1" && m["num-other-sentinels"] == "2" &&
				!strings.Contains(m["flags"], "down")
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: Sentinels did not see the primary, its replica and each other within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitReplicated blocks until the replica has acknowledged every write the
// primary has taken (WAIT 1), failing the test after timeout.
func (s *SentinelSet) WaitReplicated(timeout time.Duration) {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Primary()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
	defer cancel()
	n, err := c.Wait(ctx, 1, timeout).Result()
	if err != nil || n < 1 {
		s.t.Fatalf("redistest: replica did not acknowledge the primary's writes within %s (%d, %v)", timeout, n, err)
	}
}
