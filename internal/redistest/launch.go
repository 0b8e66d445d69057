package redistest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every redis-server and Sentinel this package starts goes through launch,
// on ports from FreePort, and is started again on new ports by
// retryPorts when it could not bind them.

// errPortTaken is a redis-server that did not get its port: it ended
// before it answered, or another server answered there. Its port was
// taken between FreePort and its bind; retryPorts starts it again.
var errPortTaken = errors.New("redis-server did not get its port")

// launchAttempts bounds retryPorts.
const launchAttempts = 5

// proc is a process started by launch.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has ended and been reaped
	out    *tail
}

// launch starts bin with args (in dir, if not empty; its output to log, if
// not nil, and the end of it kept for errors), then waits up to 10 s until
// it answers on addr. A process that ends first, or another that answers
// there, yields errPortTaken, with the process's last words, such as
// "Address already in use".
func launch(bin string, args []string, dir string, log io.Writer, addr string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	p := &proc{cmd: cmd, exited: make(chan struct{}), out: &tail{}}
	var w io.Writer = p.out
	if log != nil {
		w = io.MultiWriter(p.out, log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	if err := waitUp(addr, cmd.Process.Pid, p.exited); err != nil {
		p.kill()
		if errors.Is(err, errPortTaken) {
			err = fmt.Errorf("%w (%s): %s", err, addr, p.out.lastLine())
		}
		return nil, err
	}
	return p, nil
}

// waitUp waits until the process pid answers on addr (waitPing). The first
// answer may come from another server that holds the port (another test
// process picked it too) while ours is still on its way to a failed bind,
// so the answer's process_id must be ours; where INFO is refused (a
// password), ours must still run 200 ms later: a failed bind ends
// redis-server within milliseconds.
func waitUp(addr string, pid int, exited <-chan struct{}) error {
	if err := waitPing(addr, exited); err != nil {
		return err
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if info, err := c.Info(ctx, "server").Result(); err == nil {
		for line := range strings.Lines(info) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok && v != strconv.Itoa(pid) {
				return fmt.Errorf("%w: process %s answers there, not ours (%d)", errPortTaken, v, pid)
			}
		}
		return nil
	}
	select {
	case <-exited:
		return errPortTaken
	case <-time.After(200 * time.Millisecond):
		return nil
	}
}

// kill ends the process and waits until it is reaped. Killing a nil or an
// ended process does nothing.
func (p *proc) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// retryPorts calls start until it returns anything but errPortTaken, at most
// launchAttempts times; start takes new ports from FreePort on each call.
func retryPorts(start func() error) error {
	var err error
	for range launchAttempts {
		if err = start(); !errors.Is(err, errPortTaken) {
			return err
		}
	}
	return err
}

// waitPing waits up to 10 s for a server on addr to answer (any reply, an
// authentication error included, proves it is up), or until exited (nil:
// never) is closed.
func waitPing(addr string, exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		var rerr redis.Error
		if err == nil || errors.As(err, &rerr) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer: %w", addr, err)
		}
		select {
		case <-exited:
			return errPortTaken
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var (
	portMu    sync.Mutex
	portsLent = map[int]bool{}
)

// FreePort returns a loopback TCP port that nothing listens on and that
// this process has not handed out before (a stopped Server starts again on
// its own port): for any server a test starts on a port it must know in
// advance. It is picked below the kernel's ephemeral range where
// that range is known: a port from it (the kernel's choice for port 0) is
// free when asked, but the suite opens thousands of connections, and any
// of them may take it as its local port before redis-server binds it;
// redis-server then exits with "Address already in use" (a failed CI run).
// Another test process may still pick the same port at the same moment:
// retryPorts covers that.
func FreePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	if lo, hi := belowEphemeral(); hi > lo {
		for range 200 {
			p := lo + rand.IntN(hi-lo)
			if portsLent[p] {
				continue
			}
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				continue
			}
			_ = l.Close()
			portsLent[p] = true
			return p, nil
		}
	}
	for range 200 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !portsLent[p] {
			portsLent[p] = true
			return p, nil
		}
	}
	return 0, errors.New("redistest: no free loopback port")
}

// belowEphemeral is the range [lo, hi) of ports FreePort picks from: from
// 10000 up to the start of Linux's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range, 32768 by default; macOS and
// Windows start theirs at 49152). Empty when that start is unknown or too
// low to leave room.
func belowEphemeral() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				hi = v
			}
		}
	}
	if hi < 12000 {
		return 0, 0
	}
	return 10000, hi
}

// tail keeps the last 4 KiB written to it.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 4096; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// lastLine is the last non-empty line written.
func (t *tail) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(t.b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
