package providers_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/httpx"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
)

const (
	testUser = "reseller"
	testKey  = "0123456789abcdef0123456789abcdef"
)

// client builds one provider client on base; hc may be nil (the default
// transport) and maxConns 0 (the default pool).
type client struct {
	name providers.Name
	new  func(t *testing.T, base string, hc *http.Client, timeout time.Duration, maxConns int) providers.Resender
	// big is a request whose body is larger than the transport's 4 KiB
	// write buffer, so that a failing connection breaks the write while
	// net/http is still writing the body, not only at the final flush.
	big providers.Request
}

var clients = []client{
	{
		name: providers.OpenSRS,
		new: func(t *testing.T, base string, hc *http.Client, timeout time.Duration, maxConns int) providers.Resender {
			opts := []opensrs.Option{opensrs.WithBaseURL(base), opensrs.WithCredentials(testUser, testKey), opensrs.WithTimeout(timeout)}
			if hc != nil {
				opts = append(opts, opensrs.WithHTTPClient(hc))
			}
			if maxConns > 0 {
				opts = append(opts, opensrs.WithMaxConns(maxConns))
			}
			c, err := opensrs.New(opts...)
			require.NoError(t, err)
			return c
		},
		// The client sends any order ID; OpenSRS would refuse this one.
		big: providers.Request{OrderID: strings.Repeat("7", 6<<10)},
	},
	{
		name: providers.DigiCert,
		new: func(t *testing.T, base string, hc *http.Client, timeout time.Duration, maxConns int) providers.Resender {
			opts := []digicert.Option{digicert.WithBaseURL(base), digicert.WithAPIKey(testKey), digicert.WithTimeout(timeout)}
			if hc != nil {
				opts = append(opts, digicert.WithHTTPClient(hc))
			}
			if maxConns > 0 {
				opts = append(opts, digicert.WithMaxConns(maxConns))
			}
			c, err := digicert.New(opts...)
			require.NoError(t, err)
			return c
		},
		big: providers.Request{OrderID: "1799", Locale: "en", ApprovalEmails: manyApprovalEmails(150)},
	},
}

// TestNotSentSameForBothClients: the "was it sent?" answer decides whether an
// attempt may be retried in place, i.e. whether a customer can get two
// emails, so it must not depend on the provider. Only a request that never
// got a connection is NotSent; once bytes may have left, it counts as sent.
func TestNotSentSameForBothClients(t *testing.T) {
	t.Parallel()
	type scenario struct {
		name string
		// start returns the base URL, an HTTP client (nil: default) and a
		// check run after the call on what the server saw.
		start       func(t *testing.T) (base string, hc *http.Client, check func(t *testing.T))
		wantNotSent bool
	}
	scenarios := []scenario{
		{name: "ConnectionRefused", wantNotSent: true, start: func(t *testing.T) (string, *http.Client, func(*testing.T)) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			addr := ln.Addr().String()
			require.NoError(t, ln.Close())
			return "http://" + addr + "/api/", nil, func(*testing.T) {}
		}},
		{name: "DNSFailure", wantNotSent: true, start: func(t *testing.T) (string, *http.Client, func(*testing.T)) {
			// The real dialer and resolver, with a name server that cannot
			// be reached: the lookup fails as it does without DNS.
			tr := httpx.NewTransport(0)
			var lookups atomic.Int32
			tr.DialContext = (&net.Dialer{Resolver: &net.Resolver{PreferGo: true,
				Dial: func(context.Context, string, string) (net.Conn, error) {
					lookups.Add(1)
					return nil, errors.New("no name server in this test")
				}}}).DialContext
			return "https://certmail-test.invalid/api/", &http.Client{Transport: tr}, func(t *testing.T) {
				require.Positive(t, lookups.Load(), "the resolver was asked")
			}
		}},
		{name: "WriteFailsMidBody", start: func(t *testing.T) (string, *http.Client, func(*testing.T)) {
			got := rawServer(t, func(conn net.Conn, got *bytes.Buffer) {
				_, _ = io.Copy(got, conn) // until the client closes
			})
			tr := httpx.NewTransport(0)
			d := &net.Dialer{}
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &cutConn{Conn: conn}, nil
			}
			return got.base, &http.Client{Transport: tr}, func(t *testing.T) {
				// The server got the headers and part of the body: exactly
				// the request that may or may not be acted on.
				require.Eventually(t, func() bool { return got.closed.Load() }, 10*time.Second, 10*time.Millisecond)
				raw := got.bytes()
				head, body, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
				require.True(t, ok, "headers complete: %q", raw)
				req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(append(head, "\r\n\r\n"...))))
				require.NoError(t, err)
				require.Positive(t, len(body))
				require.Less(t, int64(len(body)), req.ContentLength)
			}
		}},
		{name: "TimeoutAfterWrite", start: func(t *testing.T) (string, *http.Client, func(*testing.T)) {
			got := rawServer(t, func(conn net.Conn, got *bytes.Buffer) {
				if readRequest(conn, got) {
					_, _ = io.Copy(io.Discard, conn) // hang until the client gives up
				}
			})
			return got.base, nil, got.requireWhole
		}},
		{name: "ResetAfterWrite", start: func(t *testing.T) (string, *http.Client, func(*testing.T)) {
			got := rawServer(t, func(conn net.Conn, got *bytes.Buffer) {
				if readRequest(conn, got) {
					_ = conn.(*net.TCPConn).SetLinger(0) // close with RST
				}
			})
			return got.base, nil, got.requireWhole
		}},
	}
	for _, sc := range scenarios {
		for _, cl := range clients {
			t.Run(sc.name+"/"+string(cl.name), func(t *testing.T) {
				t.Parallel()
				base, hc, check := sc.start(t)
				c := cl.new(t, base, hc, 500*time.Millisecond, 0)
				_, err := c.Resend(t.Context(), cl.big)
				require.Error(t, err)
				d := providers.Describe(err)
				require.Equal(t, cl.name, d.Provider, "%v", err)
				require.Equal(t, sc.wantNotSent, d.NotSent, "%v", err)
				require.Equal(t, providers.Transient, d.Class, "%v", err)
				require.Zero(t, d.StatusCode)
				check(t)
			})
		}
	}
}

func manyApprovalEmails(n int) []providers.ApprovalEmail {
	out := make([]providers.ApprovalEmail, n)
	for i := range out {
		d := "d" + strconv.Itoa(i) + ".example.com"
		out[i] = providers.ApprovalEmail{Domain: d, Email: "admin@" + d}
	}
	return out
}

// cutConn passes the first write (the transport's first 4 KiB: the headers
// and the start of the body) and fails every later one, the way a
// connection that breaks mid-write does.
type cutConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.writes.Add(1) == 1 {
		return c.Conn.Write(p)
	}
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}
}

type received struct {
	base   string
	mu     sync.Mutex
	buf    bytes.Buffer
	closed atomic.Bool
}

func (r *received) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// requireWhole checks the server read the whole request before misbehaving.
func (r *received) requireWhole(t *testing.T) {
	require.Eventually(t, func() bool { return r.closed.Load() }, 10*time.Second, 10*time.Millisecond)
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(r.bytes())))
	require.NoError(t, err)
	body, err := io.ReadAll(req.Body)
	require.NoError(t, err)
	require.Equal(t, req.ContentLength, int64(len(body)))
}

// rawServer accepts connections on a bare TCP listener and hands each to
// serve, which records what it reads into got.
func rawServer(t *testing.T, serve func(conn net.Conn, got *bytes.Buffer)) *received {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	r := &received{base: "http://" + ln.Addr().String() + "/api/"}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer r.closed.Store(true)
				defer conn.Close()
				var local bytes.Buffer
				serve(conn, &local)
				r.mu.Lock()
				r.buf.Write(local.Bytes())
				r.mu.Unlock()
			}()
		}
	}()
	return r
}

// readRequest reads one whole HTTP request from conn, copying its bytes to
// got; false if the request was incomplete.
func readRequest(conn net.Conn, got *bytes.Buffer) bool {
	req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(conn, got)))
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err == nil
}

// TestConnectionsReused: 100 calls at concurrency 20 through each client
// open at most 20 TCP connections when the pool is sized to 20, counted by
// a proxy in front of the simulator.
func TestConnectionsReused(t *testing.T) {
	t.Parallel()
	const calls, concurrency = 100, 20
	sims := map[providers.Name]func(t *testing.T) (url string, count func(string) int){
		providers.OpenSRS: func(t *testing.T) (string, func(string) int) {
			s := opensrstest.NewServer(testUser, testKey)
			t.Cleanup(s.Close)
			return s.URL(), s.Count
		},
		providers.DigiCert: func(t *testing.T) (string, func(string) int) {
			s := digicerttest.NewServer(testKey)
			t.Cleanup(s.Close)
			return s.URL(), s.Count
		},
	}
	for _, cl := range clients {
		t.Run(string(cl.name), func(t *testing.T) {
			t.Parallel()
			simURL, count := sims[cl.name](t)
			p := countingProxy(t, simURL)
			c := cl.new(t, p.base, nil, 30*time.Second, concurrency)
			orders := make(chan string)
			errs := make(chan error, calls)
			var wg sync.WaitGroup
			for range concurrency {
				wg.Go(func() {
					for id := range orders {
						_, err := c.Resend(t.Context(), providers.Request{OrderID: id})
						errs <- err
					}
				})
			}
			for i := range calls {
				orders <- strconv.Itoa(1000 + i)
			}
			close(orders)
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			for i := range calls {
				require.Equal(t, 1, count(strconv.Itoa(1000+i)))
			}
			t.Logf("%d calls at concurrency %d: %d TCP connections", calls, concurrency, p.accepted.Load())
			require.LessOrEqual(t, p.accepted.Load(), int64(concurrency))
		})
	}
}

type proxy struct {
	base     string
	accepted atomic.Int64
}

// countingProxy forwards TCP connections to target's host and counts them.
// It stands in for the provider so that the simulator stays untouched.
func countingProxy(t *testing.T, target string) *proxy {
	t.Helper()
	u, err := httpx.ParseBaseURL(target)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	p := &proxy{}
	pu := *u
	pu.Host = ln.Addr().String()
	p.base = pu.String()
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			go func() {
				defer down.Close()
				up, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					_, _ = io.Copy(up, down)
					_ = up.Close()
				}()
				_, _ = io.Copy(down, up)
			}()
		}
	}()
	return p
}
