package httpx_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/httpx"
)

func newCaller(t *testing.T, cfg httpx.Config) *httpx.Caller {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	c, err := httpx.New(cfg)
	require.NoError(t, err)
	return c
}

func serve(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func TestNewTransport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		maxConns int
		want     int
	}{
		{"Default", 0, httpx.DefaultMaxConns},
		{"Sized", 50, 50},
		{"One", 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := httpx.NewTransport(tc.maxConns)
			require.Equal(t, tc.want, tr.MaxConnsPerHost)
			require.Equal(t, tc.want, tr.MaxIdleConnsPerHost)
			require.GreaterOrEqual(t, tr.MaxIdleConns, tc.want)
			require.Equal(t, httpx.ConnectTimeout, tr.TLSHandshakeTimeout)
			require.NotNil(t, tr.DialContext)
			require.NotNil(t, tr.TLSClientConfig)
			require.False(t, tr.TLSClientConfig.InsecureSkipVerify)
			require.GreaterOrEqual(t, tr.TLSClientConfig.MinVersion, uint16(tls.VersionTLS12))
		})
	}
}

func TestNewRefusesInsecureClient(t *testing.T) {
	t.Parallel()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	require.ErrorContains(t, httpx.CheckHTTPClient(hc), "skips TLS verification")
	_, err := httpx.New(httpx.Config{HTTPClient: hc, Timeout: time.Second})
	require.ErrorContains(t, err, "skips TLS verification")
	require.NoError(t, httpx.CheckHTTPClient(&http.Client{}))
}

// TestCallerClientNotModified: a caller's client and transport are copied;
// sizing the pool clones the transport.
func TestCallerClientNotModified(t *testing.T) {
	t.Parallel()
	tr := &http.Transport{}
	hc := &http.Client{Transport: tr}
	newCaller(t, httpx.Config{HTTPClient: hc, MaxConns: 7})
	require.Nil(t, hc.CheckRedirect)
	require.Same(t, tr, hc.Transport)
	require.Zero(t, tr.MaxConnsPerHost)
	require.Zero(t, tr.MaxIdleConnsPerHost)
}

// TestRedirectNotFollowed: a 3xx comes back as the reply and the target is
// never contacted, so the API key never reaches it.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	target := serve(t, func(http.ResponseWriter, *http.Request) { hits.Add(1) })
	src := serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/steal", http.StatusTemporaryRedirect)
	})
	for _, hc := range []*http.Client{nil, {}} {
		c := newCaller(t, httpx.Config{HTTPClient: hc})
		rep, err := c.Do(t.Context(), http.MethodPut, src.URL+"/", http.Header{"X-Key": {"k"}}, []byte("{}"))
		require.NoError(t, err)
		require.Equal(t, http.StatusTemporaryRedirect, rep.StatusCode)
		require.Equal(t, target.URL+"/steal", rep.Header.Get("Location"))
	}
	require.Zero(t, hits.Load())
}

func TestDoSendsRequest(t *testing.T) {
	t.Parallel()
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+r.Header.Get("X-Key")+" "+string(body))
	})
	c := newCaller(t, httpx.Config{})
	rep, err := c.Do(t.Context(), http.MethodPost, srv.URL+"/api/", http.Header{"X-Key": {"k1"}}, []byte("payload"))
	require.NoError(t, err)
	require.Equal(t, http.StatusTooManyRequests, rep.StatusCode)
	require.Equal(t, "POST /api/ k1 payload", string(rep.Body))
	require.False(t, rep.TooLarge)
	require.Nil(t, rep.ReadErr)
	d, ok := rep.RetryAfter()
	require.True(t, ok)
	require.Equal(t, 7*time.Second, d)

	rep.Header.Set("Retry-After", "31536000")
	d, _ = rep.RetryAfter()
	require.Equal(t, providers.MaxRetryAfter, d)
}

func TestBodyCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		size     int
		tooLarge bool
	}{
		{"Empty", 0, false},
		{"ExactlyLimit", httpx.MaxBodySize, false},
		{"OneOver", httpx.MaxBodySize + 1, true},
		{"FarOver", 3 * httpx.MaxBodySize, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := serve(t, func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, strings.Repeat("x", tc.size))
			})
			rep, err := newCaller(t, httpx.Config{}).Do(t.Context(), http.MethodGet, srv.URL, nil, nil)
			require.NoError(t, err)
			require.Equal(t, tc.tooLarge, rep.TooLarge)
			require.Equal(t, min(tc.size, httpx.MaxBodySize), len(rep.Body))
			require.Nil(t, rep.ReadErr)
		})
	}
}

func TestTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	hang := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
	silent := func(_ http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}
	t.Run("NoReplyWithinTimeout", func(t *testing.T) {
		t.Parallel()
		srv := serve(t, silent)
		_, err := newCaller(t, httpx.Config{Timeout: 100 * time.Millisecond}).Do(t.Context(), http.MethodPost, srv.URL, nil, []byte("x"))
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.True(t, he.TimedOut)
		require.False(t, he.NotSent, "the request was written")
		require.Nil(t, he.Canceled)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("BodyCutByTimeout", func(t *testing.T) {
		t.Parallel()
		srv := serve(t, hang)
		rep, err := newCaller(t, httpx.Config{Timeout: 100 * time.Millisecond}).Do(t.Context(), http.MethodPost, srv.URL, nil, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, rep.StatusCode)
		require.Equal(t, "partial", string(rep.Body))
		require.NotNil(t, rep.ReadErr)
		require.True(t, rep.ReadErr.TimedOut)
		require.False(t, rep.ReadErr.NotSent)
	})
	t.Run("CancelledBefore", func(t *testing.T) {
		t.Parallel()
		var hits atomic.Int32
		srv := serve(t, func(http.ResponseWriter, *http.Request) { hits.Add(1) })
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := newCaller(t, httpx.Config{}).Do(ctx, http.MethodPost, srv.URL, nil, nil)
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.True(t, he.NotSent)
		require.ErrorIs(t, he.Canceled, context.Canceled)
		require.ErrorIs(t, err, context.Canceled)
		require.Zero(t, hits.Load())
	})
	t.Run("CancelledDuringCall", func(t *testing.T) {
		t.Parallel()
		started := make(chan struct{})
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			close(started)
			silent(w, r)
		})
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-started
			cancel()
		}()
		_, err := newCaller(t, httpx.Config{}).Do(ctx, http.MethodPost, srv.URL, nil, nil)
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.False(t, he.NotSent)
		require.False(t, he.TimedOut)
		require.ErrorIs(t, he.Canceled, context.Canceled)
	})
}

// TestNotSent: only a request that never got a connection is NotSent; the
// end-to-end table for both clients is in package providers.
func TestNotSent(t *testing.T) {
	t.Parallel()
	refused := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())
		return "http://" + addr + "/"
	}
	t.Run("Refused", func(t *testing.T) {
		t.Parallel()
		_, err := newCaller(t, httpx.Config{}).Do(t.Context(), http.MethodPost, refused(t), nil, nil)
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.True(t, he.NotSent)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
		require.False(t, strings.HasPrefix(err.Error(), "Post "), "the *url.Error wrapper is dropped: %v", err)
	})
	t.Run("TLSVerify", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		t.Cleanup(srv.Close)
		_, err := newCaller(t, httpx.Config{}).Do(t.Context(), http.MethodPost, srv.URL, nil, nil)
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.True(t, he.NotSent, "the handshake failed before any byte of the request")
		require.True(t, he.TLSVerify())
	})
	t.Run("ReusedConnectionReset", func(t *testing.T) {
		t.Parallel()
		// The first call leaves an idle connection; the server then resets
		// it while the second request is written on it.
		var calls atomic.Int32
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			if calls.Add(1) == 2 {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					_ = conn.(*net.TCPConn).SetLinger(0)
					_ = conn.Close()
				}
			}
		})
		c := newCaller(t, httpx.Config{})
		_, err := c.Do(t.Context(), http.MethodPost, srv.URL, nil, []byte("1"))
		require.NoError(t, err)
		_, err = c.Do(t.Context(), http.MethodPost, srv.URL, nil, []byte("2"))
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.False(t, he.NotSent, "a reused connection was obtained and written to")
		require.Equal(t, int32(2), calls.Load())
	})
	t.Run("BuildFails", func(t *testing.T) {
		t.Parallel()
		_, err := newCaller(t, httpx.Config{}).Do(t.Context(), "BAD METHOD", "http://127.0.0.1/", nil, nil)
		var he *httpx.Error
		require.ErrorAs(t, err, &he)
		require.True(t, he.Build)
		require.True(t, he.NotSent)
	})
	require.False(t, (&httpx.Error{Err: errors.New("x")}).TLSVerify())
}
