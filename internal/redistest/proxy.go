package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy between a client and a Redis server that reads the
// commands going through it and cuts every connection on cue, for
// fault-injection tests: a command that never reaches Redis, or one that runs
// but whose reply is lost. Only RESP arrays (what go-redis sends) are
// understood; anything else is forwarded untouched and never matches.
type Proxy struct {
	t      testing.TB
	target string
	addr   string

	mu      sync.Mutex
	ln      net.Listener // nil while stopped
	refuse  bool
	fault   *Fault
	tripped chan struct{}
	conns   map[*proxyConn]struct{}
	seen    []string
}

// Fault says when the proxy cuts every open connection. It fires once.
type Fault struct {
	// Match picks the triggering command from its arguments, the command
	// name lowercased in args[0]; nil matches every command.
	Match func(args []string) bool
	// Skip lets this many matching commands through before the fault fires.
	Skip int
	// Forward sends the triggering command to Redis and waits for its reply
	// before cutting, so the command ran but the client never hears it. When
	// false the command never reaches Redis.
	Forward bool
}

// Command matches a command by name, case-insensitively.
func Command(name string) func(args []string) bool {
	name = strings.ToLower(name)
	return func(args []string) bool { return len(args) > 0 && args[0] == name }
}

// NewProxy listens on a free loopback port and forwards to target
// (host:port) until the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy: %v", err)
	}
	p := &Proxy{t: t, target: target, addr: ln.Addr().String(), ln: ln, conns: map[*proxyConn]struct{}{}}
	go p.accept(ln)
	t.Cleanup(p.Stop)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

// Stop closes the listener and every open connection, so that clients see
// what a stopped redis-server gives them: connections cut and new ones
// refused. The target server keeps running (and keeps its data).
func (p *Proxy) Stop() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	p.dropAll()
}

// Start listens again on the same address after Stop.
func (p *Proxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("redistest: proxy listen again on %s: %w", p.addr, err)
	}
	p.ln = ln
	go p.accept(ln)
	return nil
}

// Inject arms f, replacing any fault not fired yet, and returns a channel
// closed when it fires.
func (p *Proxy) Inject(f Fault) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = &f
	p.tripped = make(chan struct{})
	return p.tripped
}

// DropAfter cuts every connection after the next n commands were forwarded
// and answered by Redis; the client hears none of the nth reply.
func (p *Proxy) DropAfter(n int) <-chan struct{} {
	return p.Inject(Fault{Skip: n - 1, Forward: true})
}

// Refuse makes the proxy close new connections at once (on) or accept them
// again (off). Open connections are not affected.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Seen lists the names of the commands forwarded so far, in order.
func (p *Proxy) Seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

func (p *Proxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxyConn{p: p, client: c, server: s}
		p.mu.Lock()
		if p.ln != ln { // stopped while dialling
			p.mu.Unlock()
			_, _ = c.Close(), s.Close()
			return
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		go pc.upstream()
		go pc.downstream()
	}
}

// dropAll closes every open connection on both sides.
func (p *Proxy) dropAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[*proxyConn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		c.close()
	}
}

// decide records a command and reports whether it triggers the armed
// fault, and whether that fault forwards it.
func (p *Proxy) decide(args []string) (trigger, forward bool, tripped chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(args) > 0 {
		p.seen = append(p.seen, args[0])
	}
	f := p.fault
	if f == nil || (f.Match != nil && !f.Match(args)) {
		return false, false, nil
	}
	if f.Skip > 0 {
		f.Skip--
		return false, false, nil
	}
	p.fault = nil
	return true, f.Forward, p.tripped
}

type proxyConn struct {
	p              *Proxy
	client, server net.Conn

	mu    sync.Mutex
	muted bool          // replies from now on are swallowed
	cut   chan struct{} // closed by downstream when a muted reply arrived
	once  sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		_ = c.client.Close()
		_ = c.server.Close()
		c.p.mu.Lock()
		delete(c.p.conns, c)
		c.p.mu.Unlock()
	})
}

// upstream reads commands from the client and forwards them one by one.
func (c *proxyConn) upstream() {
	defer c.close()
	r := bufio.NewReader(c.client)
	for {
		raw, args, err := readCommand(r)
		if err != nil {
			return
		}
		trigger, forward, tripped := c.p.decide(args)
		if !trigger {
			if _, err := c.server.Write(raw); err != nil {
				return
			}
			continue
		}
		if forward {
			cut := make(chan struct{})
			c.mu.Lock()
			c.muted, c.cut = true, cut
			c.mu.Unlock()
			if _, err := c.server.Write(raw); err == nil {
				// A reply proves Redis is past the commands written before
				// the trigger; it runs the trigger next, so a short wait
				// after the first muted bytes covers a pipelined trigger.
				select {
				case <-cut:
					time.Sleep(100 * time.Millisecond)
				case <-time.After(5 * time.Second):
				}
			}
		}
		c.p.dropAll()
		close(tripped)
		return
	}
}

// downstream copies replies to the client unless muted.
func (c *proxyConn) downstream() {
	defer c.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			c.mu.Lock()
			muted, cut := c.muted, c.cut
			if muted && cut != nil {
				close(cut)
				c.cut = nil
			}
			c.mu.Unlock()
			if !muted {
				if _, werr := c.client.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings and returns its raw bytes
// and its arguments (the name lowercased). Inline commands are returned raw
// with no arguments.
func readCommand(r *bufio.Reader) ([]byte, []string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, nil, err
	}
	raw := []byte(line)
	if !strings.HasPrefix(line, "*") {
		return raw, nil, nil
	}
	n, err := strconv.Atoi(strings.TrimRight(line[1:], "\r\n"))
	if err != nil {
		return nil, nil, fmt.Errorf("proxy: bad array header %q", line)
	}
	args := make([]string, 0, n)
	for range n {
		h, err := r.ReadString('\n')
		if err != nil {
			return nil, nil, err
		}
		raw = append(raw, h...)
		if !strings.HasPrefix(h, "$") {
			return nil, nil, errors.New("proxy: want a bulk string")
		}
		size, err := strconv.Atoi(strings.TrimRight(h[1:], "\r\n"))
		if err != nil || size < 0 {
			return nil, nil, fmt.Errorf("proxy: bad bulk header %q", h)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, nil, err
		}
		raw = append(raw, b...)
		args = append(args, string(b[:size]))
	}
	if len(args) > 0 {
		args[0] = strings.ToLower(args[0])
	}
	return raw, args, nil
}
