package opensrs_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
)

const (
	testUser = "myreseller"
	// testKey is fake; tests assert it never leaks.
	testKey = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
	// basePath is non-root so that a client ignoring the base path fails.
	basePath = "/xcp/"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

// setup serves handler under basePath and returns a client for it.
func setup(t *testing.T, handler http.HandlerFunc, opts ...opensrs.Option) *opensrs.Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc(basePath, handler)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request outside the base path: %s %s", r.Method, r.URL.Path)
		http.Error(w, "wrong path", http.StatusNotFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := opensrs.New(append([]opensrs.Option{
		opensrs.WithBaseURL(srv.URL + basePath),
		opensrs.WithCredentials(testUser, testKey),
		opensrs.WithHTTPClient(srv.Client()),
	}, opts...)...)
	require.NoError(t, err)
	return c
}

// simSetup starts the simulator and a client for it.
func simSetup(t *testing.T, opts ...opensrs.Option) (*opensrstest.Server, *opensrs.Client) {
	t.Helper()
	sim := opensrstest.NewServer(testUser, testKey)
	t.Cleanup(sim.Close)
	c, err := opensrs.New(append([]opensrs.Option{
		opensrs.WithBaseURL(sim.URL()),
		opensrs.WithCredentials(testUser, testKey),
		opensrs.WithHTTPClient(sim.Client()),
	}, opts...)...)
	require.NoError(t, err)
	return sim, c
}

func serveFile(status int, name string) func(t *testing.T) http.HandlerFunc {
	return func(t *testing.T) http.HandlerFunc {
		data := readFixture(t, name)
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(status)
			_, _ = w.Write(data)
		}
	}
}

func testMethod(t *testing.T, r *http.Request, want string) {
	t.Helper()
	require.Equal(t, want, r.Method)
}

func testHeader(t *testing.T, r *http.Request, header, want string) {
	t.Helper()
	require.Equal(t, want, r.Header.Get(header), "header %s", header)
}

func apiError(t *testing.T, err error) *opensrs.APIError {
	t.Helper()
	require.Error(t, err)
	var ae *opensrs.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, ae.Class, providers.Classify(err))
	require.Equal(t, providers.OpenSRS, providers.Describe(err).Provider)
	return ae
}

func TestNew(t *testing.T) {
	t.Parallel()
	creds := opensrs.WithCredentials(testUser, testKey)
	tests := []struct {
		name    string
		opts    []opensrs.Option
		wantErr string
	}{
		{"Defaults", []opensrs.Option{creds}, ""},
		{"Horizon", []opensrs.Option{creds, opensrs.WithBaseURL(opensrs.TestURL)}, ""},
		{"LoopbackHTTP", []opensrs.Option{creds, opensrs.WithBaseURL("http://127.0.0.1:8080/xcp/")}, ""},
		{"LocalhostHTTP", []opensrs.Option{creds, opensrs.WithBaseURL("http://localhost:8080/")}, ""},
		{"IPv6LoopbackHTTP", []opensrs.Option{creds, opensrs.WithBaseURL("http://[::1]:8080/")}, ""},
		{"AllOptions", []opensrs.Option{creds, opensrs.WithTimeout(time.Second), opensrs.WithUserAgent("x/1"), opensrs.WithHTTPClient(&http.Client{})}, ""},
		{"NoCredentials", nil, "credentials are required"},
		{"EmptyUsername", []opensrs.Option{opensrs.WithCredentials("", testKey)}, "username and API key are required"},
		{"EmptyKey", []opensrs.Option{opensrs.WithCredentials(testUser, "")}, "username and API key are required"},
		{"UsernameNewline", []opensrs.Option{opensrs.WithCredentials("a\nb", testKey)}, "not allowed in a header"},
		{"KeyWithSpace", []opensrs.Option{opensrs.WithCredentials(testUser, "a b")}, "printable ASCII"},
		{"NilHTTPClient", []opensrs.Option{creds, opensrs.WithHTTPClient(nil)}, "nil HTTP client"},
		{"InsecureHTTPClient", []opensrs.Option{creds, opensrs.WithHTTPClient(insecureClient())}, "skips TLS verification"},
		{"PlainHTTPRemote", []opensrs.Option{creds, opensrs.WithBaseURL("http://rr-n1-tor.opensrs.net:55443/")}, "must use https"},
		{"NoTrailingSlash", []opensrs.Option{creds, opensrs.WithBaseURL("https://rr-n1-tor.opensrs.net:55443")}, `must end in "/"`},
		{"NoTrailingSlashPath", []opensrs.Option{creds, opensrs.WithBaseURL("https://example.com/xcp")}, `must end in "/"`},
		{"Relative", []opensrs.Option{creds, opensrs.WithBaseURL("/xcp/")}, "not absolute"},
		{"FTP", []opensrs.Option{creds, opensrs.WithBaseURL("ftp://example.com/")}, "must use https"},
		{"UserInfo", []opensrs.Option{creds, opensrs.WithBaseURL("https://u:pw@example.com/")}, "must not contain credentials"},
		{"Query", []opensrs.Option{creds, opensrs.WithBaseURL("https://example.com/?a=1")}, "query or fragment"},
		{"BadURL", []opensrs.Option{creds, opensrs.WithBaseURL("https://exa mple.com/")}, "invalid base URL"},
		{"ZeroTimeout", []opensrs.Option{creds, opensrs.WithTimeout(0)}, "timeout must be positive"},
		{"EmptyUserAgent", []opensrs.Option{creds, opensrs.WithUserAgent("")}, "invalid user agent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := opensrs.New(tc.opts...)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.Nil(t, c)
				require.NotContains(t, err.Error(), "pw@")
				return
			}
			require.NoError(t, err)
			require.NotNil(t, c)
		})
	}
}

func insecureClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig.InsecureSkipVerify = true
	return &http.Client{Transport: tr}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := opensrs.New(opensrs.WithCredentials(testUser, testKey))
	require.NoError(t, err)
	s := c.String()
	require.Contains(t, s, opensrs.LiveURL)
	require.Contains(t, s, "timeout: 1m30s")
	require.Equal(t, "https://rr-n1-tor.opensrs.net:55443/", opensrs.LiveURL)
	require.Equal(t, "https://horizon.opensrs.net:55443/", opensrs.TestURL)
}

// TestRequestOnTheWire checks the exact request: method, path, headers,
// byte-accurate Content-Length, signature over the sent bytes and the body
// against the golden envelopes.
func TestRequestOnTheWire(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		action providers.Action
		order  string
		golden string
	}{
		{"DefaultAction", "", "1799", "request_resend_cert_email.golden"},
		{"ResendCertEmail", providers.ActionResendCertEmail, "1799", "request_resend_cert_email.golden"},
		{"ResendApproveEmail", providers.ActionResendApproveEmail, "1799", "request_resend_approve_email.golden"},
		{"NonASCII", providers.ActionResendCertEmail, "１７９９é", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []byte
			var gotReq *http.Request
			c := setup(t, func(w http.ResponseWriter, r *http.Request) {
				body, err := io.ReadAll(r.Body)
				require.NoError(t, err)
				got, gotReq = body, r
				w.Header().Set("Content-Type", "text/xml")
				_, _ = w.Write(readFixture(t, "reply_success.xml"))
			}, opensrs.WithUserAgent("certmail-test/1"))
			res, err := c.Resend(t.Context(), providers.Request{OrderID: tc.order, Action: tc.action})
			require.NoError(t, err)
			require.Equal(t, providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "Command completed successfully."}, res)

			testMethod(t, gotReq, http.MethodPost)
			require.Equal(t, basePath, gotReq.URL.Path)
			testHeader(t, gotReq, "Content-Type", "text/xml")
			testHeader(t, gotReq, "X-Username", testUser)
			testHeader(t, gotReq, "X-Signature", opensrs.Sign(got, testKey))
			testHeader(t, gotReq, "Content-Length", strconv.Itoa(len(got)))
			testHeader(t, gotReq, "User-Agent", "certmail-test/1")
			require.Equal(t, int64(len(got)), gotReq.ContentLength)
			require.Empty(t, gotReq.TransferEncoding)
			require.NotContains(t, string(got), testKey)
			if tc.golden != "" {
				require.Equal(t, string(readFixture(t, tc.golden)), string(got))
			} else {
				require.True(t, utf8.Valid(got))
				require.Contains(t, string(got), `<item key="order_id">`+tc.order+`</item>`)
				require.Greater(t, len(got), utf8.RuneCount(got), "Content-Length must count bytes, not characters")
			}
		})
	}
	t.Run("VectorSignature", func(t *testing.T) {
		t.Parallel()
		var sig string
		c := setup(t, func(w http.ResponseWriter, r *http.Request) {
			sig = r.Header.Get("X-Signature")
			_, _ = w.Write(readFixture(t, "reply_success.xml"))
		})
		_, err := c.ResendCertEmail(t.Context(), "1799")
		require.NoError(t, err)
		require.Equal(t, "e653bd472a1ad4f56071da78f7bbc65a", sig)
	})
}

func TestReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file      string
		status    int
		wantClass providers.Class
		wantCode  string
		wantMsg   string
		wantError string
	}{
		{"reply_success.xml", 200, providers.Success, "200", "Command completed successfully.", ""},
		{"reply_lowercase.xml", 200, providers.Success, "250", "Action submitted for asynchronous processing", ""},
		{"reply_array_out_of_order.xml", 200, providers.Success, "200", "Command completed successfully.", ""},
		{"reply_success.xml", 500, providers.Success, "200", "Command completed successfully.", ""},
		{"reply_auth_failure.xml", 200, providers.Configuration, "401", "Authentication Error: check the reseller username and API key", "opensrs: 401 Authentication Error"},
		{"reply_auth_failure.xml", 401, providers.Configuration, "401", "Authentication Error", ""},
		{"reply_not_found.xml", 200, providers.Permanent, "480", "Item not found", "opensrs: 480 Item not found (permanent)"},
		{"reply_rate_limit.xml", 200, providers.RateLimited, "300", "Max command rate exceeded", "opensrs: 300 Max command rate exceeded (rate_limited)"},
		{"reply_ip_denied.xml", 200, providers.Configuration, "400", "IP access rules", "Access denied: invalid IP address"},
		{"reply_internal_error.xml", 200, providers.Transient, "400", "Internal server error. Please retry.", "(transient)"},
		{"reply_invalid_command.xml", 200, providers.Permanent, "400", "Invalid Command: resend_approver_email", "(permanent)"},
		{"reply_error_details.xml", 200, providers.Permanent, "465", "Invalid data; order is not completed; order_id must be numeric", ""},
		{"reply_mixed_preamble.xml", 200, providers.Permanent, "480", "Item not found: order <1799> & friends", ""},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s_%d", strings.TrimSuffix(tc.file, ".xml"), tc.status), func(t *testing.T) {
			t.Parallel()
			c := setup(t, serveFile(tc.status, tc.file)(t))
			rep, err := c.ResendCertEmail(t.Context(), "1799")
			require.NotNil(t, rep)
			require.Equal(t, tc.status, rep.StatusCode)
			require.Equal(t, tc.wantCode, rep.ResponseCode)
			if tc.wantClass == providers.Success {
				require.NoError(t, err)
				require.True(t, rep.IsSuccess)
				require.Equal(t, tc.wantMsg, rep.Message())
				return
			}
			ae := apiError(t, err)
			require.False(t, rep.IsSuccess)
			require.Equal(t, tc.wantClass, ae.Class)
			require.Equal(t, tc.wantCode, ae.Code)
			require.Equal(t, tc.status, ae.StatusCode)
			require.Contains(t, ae.Message, tc.wantMsg)
			require.Contains(t, err.Error(), tc.wantError)
			require.False(t, ae.NotSent)
		})
	}
}

// TestHTTPFailures covers replies without a usable OPS body.
func TestHTTPFailures(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), 1<<20+1)
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		wantClass providers.Class
		wantErr   string
		retryIn   time.Duration
	}{
		{"500Empty", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }, providers.Transient, "opensrs: HTTP 500 (transient)", 0},
		{"503Empty", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }, providers.Transient, "opensrs: HTTP 503 (transient)", 0},
		{"502HTML", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(502)
			_, _ = io.WriteString(w, "<html><body>Bad Gateway</body></html>")
		}, providers.Transient, "opensrs: HTTP 502: <html><body>Bad Gateway</body></html> (transient)", 0},
		{"404Text", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no such path", 404) }, providers.Permanent, "opensrs: HTTP 404: no such path (permanent)", 0},
		{"302NotFollowed", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere/", http.StatusFound)
		}, providers.Permanent, "opensrs: HTTP 302", 0},
		{"429RetryAfter", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
		}, providers.RateLimited, "opensrs: HTTP 429 (rate_limited)", 7 * time.Second},
		{"429RetryAfterOneYearCapped", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "31536000")
			w.WriteHeader(429)
		}, providers.RateLimited, "opensrs: HTTP 429 (rate_limited)", providers.MaxRetryAfter},
		{"429RetryAfterOverflow", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "99999999999")
			w.WriteHeader(429)
		}, providers.RateLimited, "opensrs: HTTP 429 (rate_limited)", providers.MaxRetryAfter},
		{"200Malformed", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "<OPS_envelope><body>") }, providers.Permanent, "malformed OPS reply", 0},
		{"200Empty", func(w http.ResponseWriter, _ *http.Request) {}, providers.Permanent, "malformed OPS reply", 0},
		{"200TooLarge", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(big) }, providers.Permanent, "opensrs: HTTP 200: reply larger than 1 MiB (permanent)", 0},
		{"503TooLarge", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(503)
			_, _ = w.Write(big)
		}, providers.Transient, "opensrs: HTTP 503: reply larger than 1 MiB (transient)", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := setup(t, tc.handler)
			rep, err := c.ResendCertEmail(t.Context(), "1799")
			require.Nil(t, rep)
			ae := apiError(t, err)
			require.Equal(t, tc.wantClass, ae.Class)
			require.Contains(t, err.Error(), tc.wantErr)
			require.Equal(t, tc.retryIn, ae.RetryAfter)
			require.False(t, ae.NotSent)
			require.Empty(t, ae.Code)
		})
	}
}

// TestSimulatorClasses drives every class through the simulator.
func TestSimulatorClasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		behavior  opensrstest.Behavior
		wantClass providers.Class
		wantCode  string
		wantErr   string
	}{
		{"Success", opensrstest.Behavior{}, providers.Success, "200", ""},
		{"RateLimited", opensrstest.Behavior{RateLimited: 1}, providers.RateLimited, "300", "opensrs: 300 Max command rate exceeded (rate_limited)"},
		{"TransientFailure", opensrstest.Behavior{TransientFailures: 1}, providers.Transient, "", "opensrs: HTTP 503 (transient)"},
		{"RateThenTransient", opensrstest.Behavior{RateLimited: 0, TransientFailures: 2}, providers.Transient, "", "HTTP 503"},
		{"IPNotAllowed", opensrstest.Behavior{IPNotAllowed: true}, providers.Configuration, "", "IP access rules"},
		{"DelayShort", opensrstest.Behavior{Delay: 10 * time.Millisecond}, providers.Success, "200", ""},
	}
	for _, code := range []int{310, 350, 404, 437, 486, 705} {
		tests = append(tests, struct {
			name      string
			behavior  opensrstest.Behavior
			wantClass providers.Class
			wantCode  string
			wantErr   string
		}{strconv.Itoa(code), opensrstest.Behavior{ErrorCode: code}, classFor(code), strconv.Itoa(code), ""})
	}
	for _, code := range []int{401, 410, 435, 415, 430, 440, 445, 447, 460, 465, 480, 485, 487, 999} {
		tests = append(tests, struct {
			name      string
			behavior  opensrstest.Behavior
			wantClass providers.Class
			wantCode  string
			wantErr   string
		}{strconv.Itoa(code), opensrstest.Behavior{ErrorCode: code}, classFor(code), strconv.Itoa(code), ""})
	}
	tests = append(tests, []struct {
		name      string
		behavior  opensrstest.Behavior
		wantClass providers.Class
		wantCode  string
		wantErr   string
	}{
		{"400AccessDenied", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Access denied: invalid IP address"}, providers.Configuration, "400", "IP access rules"},
		{"400InternalError", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Internal server error"}, providers.Transient, "400", ""},
		{"400PleaseRetry", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Temporary failure. Please retry."}, providers.Transient, "400", ""},
		{"400InvalidCommand", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Invalid Command: foo"}, providers.Permanent, "400", ""},
		{"400Other", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Order is not completed"}, providers.Permanent, "400", "opensrs: 400 Order is not completed (permanent)"},
	}...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, c := simSetup(t)
			sim.SetBehavior("1799", tc.behavior)
			res, err := c.Resend(t.Context(), providers.Request{OrderID: "1799"})
			require.Equal(t, 1, sim.Count("1799"))
			if tc.wantClass == providers.Success {
				require.NoError(t, err)
				require.Equal(t, tc.wantCode, res.Code)
				return
			}
			ae := apiError(t, err)
			require.Equal(t, tc.wantClass, ae.Class, "%v", err)
			require.Equal(t, tc.wantCode, ae.Code)
			require.Contains(t, err.Error(), tc.wantErr)
			require.False(t, ae.NotSent)
			require.Contains(t, err.Error(), "("+tc.wantClass.String()+")")
		})
	}
}

func classFor(code int) providers.Class {
	switch code {
	case 300, 310:
		return providers.RateLimited
	case 350, 404, 437, 486, 705:
		return providers.Transient
	case 401, 410, 435:
		return providers.Configuration
	}
	return providers.Permanent
}

func TestSimulatorSequence(t *testing.T) {
	t.Parallel()
	sim, c := simSetup(t)
	sim.SetBehavior("5", opensrstest.Behavior{RateLimited: 1, TransientFailures: 1, ErrorCode: 480})
	want := []providers.Class{providers.RateLimited, providers.Transient, providers.Permanent, providers.Permanent}
	for i, w := range want {
		_, err := c.ResendApproveEmail(t.Context(), "5")
		require.Equal(t, w, providers.Classify(err), "call %d: %v", i, err)
	}
	sim.SetBehavior("5", opensrstest.Behavior{})
	rep, err := c.ResendApproveEmail(t.Context(), "5")
	require.NoError(t, err)
	require.Equal(t, "5", rep.OrderID)
	require.Equal(t, 5, sim.Count("5"))
}

func TestWrongCredentials(t *testing.T) {
	t.Parallel()
	sim := opensrstest.NewServer(testUser, testKey)
	t.Cleanup(sim.Close)
	tests := []struct {
		name, user, key string
	}{
		{"WrongKey", testUser, strings.Repeat("a", 80)},
		{"WrongUser", "subuser", testKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := opensrs.New(opensrs.WithBaseURL(sim.URL()), opensrs.WithCredentials(tc.user, tc.key))
			require.NoError(t, err)
			_, err = c.ResendCertEmail(t.Context(), "1799")
			ae := apiError(t, err)
			require.Equal(t, providers.Configuration, ae.Class)
			require.Equal(t, "401", ae.Code)
			require.Contains(t, err.Error(), "opensrs: 401 Authentication Error")
			require.NotContains(t, err.Error(), tc.key)
		})
	}
}

func TestTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	t.Run("HangTimesOut", func(t *testing.T) {
		t.Parallel()
		sim, c := simSetup(t, opensrs.WithTimeout(200*time.Millisecond))
		sim.SetBehavior("1", opensrstest.Behavior{Hang: true})
		start := time.Now()
		_, err := c.ResendCertEmail(t.Context(), "1")
		require.Less(t, time.Since(start), 5*time.Second)
		ae := apiError(t, err)
		require.Equal(t, providers.Transient, ae.Class)
		require.False(t, ae.NotSent, "the request was written; the email may have been sent")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Contains(t, err.Error(), "no reply within 200ms")
	})
	t.Run("DelayLongerThanTimeout", func(t *testing.T) {
		t.Parallel()
		sim, c := simSetup(t, opensrs.WithTimeout(100*time.Millisecond))
		sim.SetDefault(opensrstest.Behavior{Delay: time.Minute})
		_, err := c.ResendCertEmail(t.Context(), "2")
		require.Equal(t, providers.Transient, providers.Classify(err))
	})
	t.Run("CallerCancels", func(t *testing.T) {
		t.Parallel()
		sim, c := simSetup(t)
		sim.SetBehavior("3", opensrstest.Behavior{Hang: true})
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			for sim.Count("3") == 0 {
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		_, err := c.ResendCertEmail(ctx, "3")
		ae := apiError(t, err)
		require.Equal(t, providers.Transient, ae.Class)
		require.ErrorIs(t, err, context.Canceled)
		require.False(t, ae.NotSent)
	})
	t.Run("AlreadyCancelled", func(t *testing.T) {
		t.Parallel()
		sim, c := simSetup(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := c.ResendCertEmail(ctx, "4")
		ae := apiError(t, err)
		require.Equal(t, providers.Transient, ae.Class)
		require.ErrorIs(t, err, context.Canceled)
		require.True(t, ae.NotSent)
		require.Zero(t, sim.Count("4"))
	})
	t.Run("CallerDeadline", func(t *testing.T) {
		t.Parallel()
		sim, c := simSetup(t)
		sim.SetBehavior("5", opensrstest.Behavior{Hang: true})
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := c.ResendCertEmail(ctx, "5")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Equal(t, providers.Transient, providers.Classify(err))
	})
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	c, err := opensrs.New(opensrs.WithBaseURL("http://"+addr+"/"), opensrs.WithCredentials(testUser, testKey))
	require.NoError(t, err)
	_, err = c.ResendCertEmail(t.Context(), "1799")
	ae := apiError(t, err)
	require.Equal(t, providers.Transient, ae.Class)
	require.True(t, ae.NotSent)
	require.True(t, providers.Describe(err).NotSent)
	require.Contains(t, err.Error(), "opensrs: request not sent: dial tcp "+addr)
	require.Contains(t, err.Error(), "connection refused (transient)")
	var opErr *net.OpError
	require.ErrorAs(t, err, &opErr)
}

// rawServer accepts one connection at a time, reads one HTTP request and
// lets respond write whatever it wants on the bare connection.
func rawServer(t *testing.T, respond func(conn net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				respond(conn)
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/"
}

func TestTransportFailures(t *testing.T) {
	t.Parallel()
	bare := readFixture(t, "ip_not_allowed_raw.xml")
	tests := []struct {
		name        string
		respond     func(conn net.Conn)
		wantClass   providers.Class
		wantNotSent bool
		wantErr     string
	}{
		{"BareXMLNoStatusLine", func(conn net.Conn) { _, _ = conn.Write(bare) }, providers.Configuration, false,
			"check the OpenSRS API IP allow list (Reseller Control Panel → Account settings → API settings → IP access rules)"},
		{"BareEnvelopeNoDeclaration", func(conn net.Conn) { _, _ = io.WriteString(conn, "<OPS_envelope>\n<body/></OPS_envelope>") }, providers.Configuration, false,
			"IP access rules"},
		{"ClosedAfterRequest", func(net.Conn) {}, providers.Transient, false, "request sent, no reply (the email may have been sent)"},
		{"ResetAfterRequest", func(conn net.Conn) {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}, providers.Transient, false, "(transient)"},
		{"GarbageStatusLine", func(conn net.Conn) { _, _ = io.WriteString(conn, "HELLO\r\n\r\n") }, providers.Transient, false, "malformed HTTP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := rawServer(t, tc.respond)
			c, err := opensrs.New(opensrs.WithBaseURL(base), opensrs.WithCredentials(testUser, testKey))
			require.NoError(t, err)
			_, err = c.ResendCertEmail(t.Context(), "1799")
			ae := apiError(t, err)
			require.Equal(t, tc.wantClass, ae.Class, "%v", err)
			require.Equal(t, tc.wantNotSent, ae.NotSent)
			require.Contains(t, err.Error(), tc.wantErr)
			require.Zero(t, ae.StatusCode)
		})
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	sim := opensrstest.NewTLSServer(testUser, testKey)
	t.Cleanup(sim.Close)
	require.True(t, strings.HasPrefix(sim.URL(), "https://127.0.0.1:"))
	t.Run("Trusted", func(t *testing.T) {
		t.Parallel()
		c, err := opensrs.New(opensrs.WithBaseURL(sim.URL()), opensrs.WithCredentials(testUser, testKey), opensrs.WithHTTPClient(sim.Client()))
		require.NoError(t, err)
		rep, err := c.ResendCertEmail(t.Context(), "1799")
		require.NoError(t, err)
		require.Equal(t, "1799", rep.OrderID)
	})
	t.Run("UnknownAuthority", func(t *testing.T) {
		t.Parallel()
		c, err := opensrs.New(opensrs.WithBaseURL(sim.URL()), opensrs.WithCredentials(testUser, testKey))
		require.NoError(t, err)
		_, err = c.ResendCertEmail(t.Context(), "1799")
		ae := apiError(t, err)
		require.Equal(t, providers.Configuration, ae.Class)
		require.True(t, ae.NotSent)
		require.Contains(t, err.Error(), "TLS certificate verification failed")
	})
}

// TestXMLInjection: values are escaped and reach the server literally.
func TestXMLInjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		order string
	}{
		{"CloseItem", `1799</item><item key="order_id">1</item>`},
		{"Ampersand", "1799&amp;2"},
		{"Quotes", `1799"'<>`},
		{"CDATA", "<![CDATA[1799]]>"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, c := simSetup(t)
			_, err := c.ResendCertEmail(t.Context(), tc.order)
			ae := apiError(t, err)
			require.Equal(t, "465", ae.Code, "the simulator must see a non-numeric order_id, not an injected one")
			reqs := sim.Requests()
			require.Len(t, reqs, 1)
			require.Equal(t, tc.order, reqs[0].OrderID)
			require.Equal(t, "resend_cert_email", reqs[0].Action)
		})
	}
}

func TestResendDispatch(t *testing.T) {
	t.Parallel()
	sim, c := simSetup(t)
	_, err := c.Resend(t.Context(), providers.Request{OrderID: "1", Action: "resend_approver_email"})
	ae := apiError(t, err)
	require.Equal(t, providers.Permanent, ae.Class)
	require.Contains(t, err.Error(), `unsupported action "resend_approver_email"`)
	require.Empty(t, sim.Requests())

	for _, a := range []providers.Action{"", providers.ActionResendCertEmail, providers.ActionResendApproveEmail} {
		res, err := c.Resend(t.Context(), providers.Request{OrderID: "2", Action: a})
		require.NoError(t, err)
		require.Equal(t, providers.Result{Provider: providers.OpenSRS, StatusCode: 200, Code: "200", Message: "Command completed successfully."}, res)
	}
	reqs := sim.Requests()
	require.Len(t, reqs, 3)
	require.Equal(t, []string{"resend_cert_email", "resend_cert_email", "resend_approve_email"},
		[]string{reqs[0].Action, reqs[1].Action, reqs[2].Action})
}

// TestKeyNeverPrinted formats the client and every kind of error with every
// common verb and checks the API key is absent.
func TestKeyNeverPrinted(t *testing.T) {
	t.Parallel()
	sim, c := simSetup(t, opensrs.WithTimeout(200*time.Millisecond))
	sim.SetBehavior("2", opensrstest.Behavior{ErrorCode: 401})
	sim.SetBehavior("3", opensrstest.Behavior{IPNotAllowed: true})
	sim.SetBehavior("4", opensrstest.Behavior{Hang: true})
	sim.SetBehavior("5", opensrstest.Behavior{TransientFailures: 1})
	echo := setup(t, func(w http.ResponseWriter, r *http.Request) {
		// A hostile server echoing the key back must not leak it either.
		w.WriteHeader(500)
		_, _ = io.WriteString(w, "key="+testKey)
	})
	bad, err := opensrs.New(opensrs.WithCredentials(testUser, testKey+"x"), opensrs.WithBaseURL(sim.URL()))
	require.NoError(t, err)
	call := func(cl *opensrs.Client, order string) error {
		_, err := cl.ResendCertEmail(t.Context(), order)
		require.Error(t, err)
		return err
	}
	_, newErr := opensrs.New(opensrs.WithCredentials(testUser, testKey), opensrs.WithTimeout(-1))
	tests := []struct {
		name string
		v    any
	}{
		{"Client", c},
		{"ClientValue", *c},
		{"AuthError", call(c, "2")},
		{"WrongKeyError", call(bad, "1")},
		{"IPDenied", call(c, "3")},
		{"Timeout", call(c, "4")},
		{"HTTP503", call(c, "5")},
		{"Injection", call(c, "x"+testKey)},
		{"Echo", call(echo, "1")},
		{"NewError", newErr},
		{"Describe", providers.Describe(call(c, "2"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
				out := fmt.Sprintf(verb, tc.v)
				require.NotContains(t, out, testKey, verb)
				require.NotContains(t, out, fmt.Sprintf("%x", testKey), verb)
			}
			if err, ok := tc.v.(error); ok {
				require.NotContains(t, err.Error(), testKey)
				for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
					require.NotContains(t, fmt.Sprintf("%+v", e), testKey)
				}
			}
		})
	}
}

func TestDNSFailureNotSent(t *testing.T) {
	t.Parallel()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "rr-n1-tor.opensrs.net", IsNotFound: true}}
		},
	}}
	c, err := opensrs.New(opensrs.WithCredentials(testUser, testKey), opensrs.WithHTTPClient(hc))
	require.NoError(t, err)
	_, err = c.ResendCertEmail(t.Context(), "1799")
	ae := apiError(t, err)
	require.Equal(t, providers.Transient, ae.Class)
	require.True(t, ae.NotSent)
	require.Contains(t, err.Error(), "opensrs: request not sent: dial tcp: lookup rr-n1-tor.opensrs.net: no such host (transient)")
	var dnsErr *net.DNSError
	require.ErrorAs(t, err, &dnsErr)
	require.Nil(t, hc.CheckRedirect, "WithHTTPClient must not modify the caller's client")
}
