package digicert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/providers/digicert/digicerttest"
	"github.com/certmail/certmail/internal/providers/httpx"
)

// dumpRequest renders the request as received, with the key checked and
// redacted, for golden comparison.
func dumpRequest(t *testing.T, r *http.Request) []byte {
	t.Helper()
	testHeader(t, r, "X-DC-DEVKEY", testKey)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s", r.Method, r.URL.EscapedPath())
	if r.URL.RawQuery != "" {
		fmt.Fprintf(&b, "?%s", r.URL.RawQuery)
	}
	fmt.Fprintf(&b, " %s\n", r.Proto)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := strings.Join(r.Header[k], ", ")
		if k == "X-Dc-Devkey" {
			v = redacted
		}
		fmt.Fprintf(&b, "%s: %s\n", k, v)
	}
	require.Equal(t, []string{fmt.Sprint(r.ContentLength)}, r.Header.Values("Content-Length"))
	b.WriteString("\n")
	body, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	require.Equal(t, r.ContentLength, int64(len(body)))
	b.Write(body)
	b.WriteString("\n")
	return b.Bytes()
}

func TestResendEmailsWire(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		orderID string
		body    ResendEmailsRequest
	}{
		{
			// docs/digicert.md §8: Content-Length 95.
			name:    "EmailsAndLocale",
			orderID: "123456789",
			body: ResendEmailsRequest{
				DomainApprovalEmails: []DomainApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}},
				Locale:               "en",
			},
		},
		{
			name:    "SeveralEmails",
			orderID: "36066061",
			body: ResendEmailsRequest{
				DomainApprovalEmails: []DomainApprovalEmail{
					{Domain: "example.com", Email: "admin@example.com"},
					{Domain: "sub.example2.com", Email: "someone@example2.com", EmailDomain: "example2.com"},
				},
				Locale: "en",
			},
		},
		{name: "Empty", orderID: "999999999"},
		{name: "LocaleOnly", orderID: "1", body: ResendEmailsRequest{Locale: "de_DE"}},
		{name: "EscapedOrderID", orderID: "1/../2?x=y#z", body: ResendEmailsRequest{
			DomainApprovalEmails: []DomainApprovalEmail{{Domain: `ex"ample.com","email":"evil@x`, Email: "a\\b@<example>.com\u2028"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var dump []byte
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				testMethod(t, r, http.MethodPut)
				testHeader(t, r, "Content-Type", "application/json")
				testHeader(t, r, "Accept", "application/json")
				testHeader(t, r, "User-Agent", DefaultUserAgent)
				dump = dumpRequest(t, r)
				w.WriteHeader(http.StatusNoContent)
			})
			resp, err := c.ResendEmails(t.Context(), tc.orderID, tc.body)
			require.NoError(t, err)
			require.Equal(t, http.StatusNoContent, resp.StatusCode)
			golden(t, "request_"+tc.name, dump)
		})
	}
}

func TestResendEmailsInjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		orderID  string
		wantPath string
	}{
		{name: "DotDot", orderID: "1/../../admin", wantPath: basePath + "order/certificate/1%2F..%2F..%2Fadmin/resend-emails"},
		{name: "Query", orderID: "1?x=1", wantPath: basePath + "order/certificate/1%3Fx=1/resend-emails"},
		{name: "Fragment", orderID: "1#frag", wantPath: basePath + "order/certificate/1%23frag/resend-emails"},
		{name: "Space", orderID: "1 2", wantPath: basePath + "order/certificate/1%202/resend-emails"},
		{name: "Percent", orderID: "1%2F2", wantPath: basePath + "order/certificate/1%252F2/resend-emails"},
		{name: "CRLF", orderID: "1\r\nX-Evil: 1", wantPath: basePath + "order/certificate/1%0D%0AX-Evil:%201/resend-emails"},
	}
	domain := `example.com","email":"attacker@evil.test`
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var gotPath, gotQuery string
			var got ResendEmailsRequest
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				gotPath, gotQuery = r.URL.EscapedPath(), r.URL.RawQuery
				require.Empty(t, r.Header.Values("X-Evil"))
				dec := json.NewDecoder(r.Body)
				dec.DisallowUnknownFields()
				require.NoError(t, dec.Decode(&got))
				w.WriteHeader(http.StatusNoContent)
			})
			body := ResendEmailsRequest{DomainApprovalEmails: []DomainApprovalEmail{{Domain: domain, Email: "admin@example.com"}}}
			_, err := c.ResendEmails(t.Context(), tc.orderID, body)
			require.NoError(t, err)
			require.Equal(t, tc.wantPath, gotPath)
			require.Empty(t, gotQuery)
			require.Equal(t, body, got)
		})
	}
}

func TestSuccess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{name: "NoContent", status: http.StatusNoContent},
		{name: "OKWithBody", status: http.StatusOK, body: `{"errors":[{"code":"ignored","message":"2xx bodies are not decoded"}]}`},
		{name: "OKEmpty", status: http.StatusOK},
		{name: "Accepted", status: http.StatusAccepted, body: "not json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			res, err := c.Resend(t.Context(), providers.Request{OrderID: "42"})
			require.NoError(t, err)
			require.Equal(t, providers.Result{Provider: providers.DigiCert, StatusCode: tc.status}, res)
			require.Equal(t, providers.Success, providers.Classify(err))
		})
	}
}

func TestErrorReplies(t *testing.T) {
	t.Parallel()
	const defaultWait = 7 * time.Second
	httpDate := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name           string
		status         int
		contentType    string
		file           string
		header         map[string]string
		wantClass      providers.Class
		wantItems      []ErrorItem
		wantError      string
		wantRetryAfter time.Duration // exact, unless wantRetryRange
		wantRetryRange bool
	}{
		{
			name: "NotFoundOrder", status: 404, contentType: "application/json", file: "not_found.json",
			wantClass: providers.Permanent,
			wantItems: []ErrorItem{{"not_found|order", "The specified order was not found."}},
			wantError: "digicert: 404 not_found|order: The specified order was not found. (permanent)",
		},
		{
			name: "TwoErrorsCharset", status: 400, contentType: "application/json; charset=utf-8", file: "two_errors.json",
			wantClass: providers.Permanent,
			wantItems: []ErrorItem{
				{"required_param:certificate.server_platform", "Server platform is required."},
				{"required_param:certificate.signature_hash", "Signature hash is required."},
			},
			wantError: "digicert: 400 required_param:certificate.server_platform: Server platform is required.; " +
				"required_param:certificate.signature_hash: Signature hash is required. (permanent)",
		},
		{
			name: "RateLimitedNoRetryAfter", status: 429, contentType: "application/json", file: "rate_limited.json",
			wantClass:      providers.RateLimited,
			wantItems:      []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}},
			wantError:      "digicert: 429 request_limit_exceeded: Service unavailable, please limit request volume (rate_limited)",
			wantRetryAfter: defaultWait,
		},
		{
			name: "RateLimitedRetryAfterSeconds", status: 429, contentType: "application/json", file: "rate_limited.json",
			header:    map[string]string{"Retry-After": "12"},
			wantClass: providers.RateLimited, wantRetryAfter: 12 * time.Second,
			wantItems: []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}},
		},
		{
			name: "RateLimitedRetryAfterDate", status: 429, contentType: "application/json", file: "rate_limited.json",
			header:    map[string]string{"Retry-After": httpDate},
			wantClass: providers.RateLimited, wantRetryAfter: 30 * time.Second, wantRetryRange: true,
			wantItems: []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}},
		},
		{
			name: "RateLimitedRetryAfterOneYearCapped", status: 429, contentType: "application/json", file: "rate_limited.json",
			header:    map[string]string{"Retry-After": "31536000"},
			wantClass: providers.RateLimited, wantRetryAfter: providers.MaxRetryAfter,
			wantItems: []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}},
		},
		{
			name: "RateLimitedRetryAfterGarbage", status: 429, file: "rate_limited.json",
			header:    map[string]string{"Retry-After": "soon"},
			wantClass: providers.RateLimited, wantRetryAfter: defaultWait,
			wantItems: []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}},
		},
		{
			name: "RateLimitedNoBody", status: 429, wantClass: providers.RateLimited, wantRetryAfter: defaultWait,
			wantError: "digicert: HTTP 429 (rate_limited)",
		},
		{
			name: "ForbiddenInvalidKey", status: 403, contentType: "application/json", file: "forbidden.json",
			wantClass: providers.Configuration,
			wantItems: []ErrorItem{{"access_denied|access_denied_invalid_key", "Invalid API key."}},
			wantError: "digicert: 403 access_denied|access_denied_invalid_key: Invalid API key. (configuration)",
		},
		{name: "UnauthorizedNoBody", status: 401, wantClass: providers.Configuration, wantError: "digicert: HTTP 401 (configuration)"},
		{
			name: "NotFoundRoute", status: 404, contentType: "application/json", file: "route_not_found.json",
			wantClass: providers.Configuration,
			wantItems: []ErrorItem{{"not_found|route", "The requested route was not found."}},
		},
		{name: "NotFoundNoBody", status: 404, wantClass: providers.Configuration, wantError: "digicert: HTTP 404 (configuration)"},
		{
			name: "BadGatewayHTML", status: 502, contentType: "text/html", file: "not_json.html",
			wantClass: providers.Transient, wantError: "digicert: HTTP 502 (transient)",
		},
		{name: "UnavailableNoBody", status: 503, wantClass: providers.Transient, wantError: "digicert: HTTP 503 (transient)"},
		{
			name: "InternalErrorJSONAsText", status: 500, contentType: "text/plain", file: "not_found.json",
			wantClass: providers.Transient,
			wantItems: []ErrorItem{{"not_found|order", "The specified order was not found."}},
			wantError: "digicert: 500 not_found|order: The specified order was not found. (transient)",
		},
		{name: "RequestTimeout", status: 408, wantClass: providers.Transient},
		{name: "Conflict", status: 409, file: "two_errors.json", wantClass: providers.Permanent, wantItems: []ErrorItem{
			{"required_param:certificate.server_platform", "Server platform is required."},
			{"required_param:certificate.signature_hash", "Signature hash is required."},
		}},
		{name: "NotModified", status: 304, wantClass: providers.Configuration, wantError: "digicert: HTTP 304: redirect not followed (configuration)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := reply(t, tc.status, tc.contentType, tc.file)
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				h(w, r)
			}, WithDefaultRateLimitWait(defaultWait))
			resp, err := c.ResendEmails(t.Context(), "36066061", ResendEmailsRequest{})
			e := asError(t, err)
			require.NotNil(t, resp)
			require.Equal(t, tc.status, resp.StatusCode)
			require.Equal(t, tc.status, e.StatusCode)
			require.Equal(t, tc.wantClass, e.Class)
			require.Equal(t, tc.wantItems, e.Errors)
			require.False(t, e.NotSent)
			if tc.wantError != "" {
				require.Equal(t, tc.wantError, e.Error())
			}
			if tc.file != "" {
				want, rerr := os.ReadFile("testdata/" + tc.file)
				require.NoError(t, rerr)
				require.Equal(t, want, e.Body)
			}
			if tc.wantRetryRange {
				require.InDelta(t, tc.wantRetryAfter.Seconds(), e.RetryAfter.Seconds(), 2)
			} else {
				require.Equal(t, tc.wantRetryAfter, e.RetryAfter)
			}

			d := providers.Describe(err)
			require.Equal(t, providers.DigiCert, d.Provider)
			require.Equal(t, tc.wantClass, d.Class)
			require.Equal(t, tc.status, d.StatusCode)
			require.Equal(t, e.RetryAfter, d.RetryAfter)
			if len(tc.wantItems) > 0 {
				var codes, msgs []string
				for _, it := range tc.wantItems {
					codes = append(codes, it.Code)
					msgs = append(msgs, it.Message)
				}
				require.Equal(t, strings.Join(codes, "; "), d.Code)
				require.Equal(t, strings.Join(msgs, "; "), d.Message)
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		opts   []Option
	}{
		{name: "MovedDefaultClient", status: http.StatusMovedPermanently},
		{name: "FoundCallerClient", status: http.StatusFound, opts: []Option{WithHTTPClient(&http.Client{})}},
		{name: "SeeOther", status: http.StatusSeeOther},
		{name: "TemporaryRedirect", status: http.StatusTemporaryRedirect},
		{name: "PermanentRedirect", status: http.StatusPermanentRedirect, opts: []Option{WithHTTPClient(&http.Client{})}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var followed atomic.Int32
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				followed.Add(1)
				t.Errorf("redirect followed, X-DC-DEVKEY forwarded: %v", r.Header.Get("X-DC-DEVKEY") == testKey)
				w.WriteHeader(http.StatusNoContent)
			}))
			t.Cleanup(target.Close)
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/steal", tc.status)
			}, tc.opts...)
			_, err := c.ResendEmails(t.Context(), "1", ResendEmailsRequest{})
			e := asError(t, err)
			require.Equal(t, tc.status, e.StatusCode)
			require.Equal(t, providers.Configuration, e.Class)
			require.Equal(t, fmt.Sprintf("digicert: HTTP %d: redirect to %q not followed (configuration)", tc.status, target.URL+"/steal"), e.Error())
			require.Zero(t, followed.Load())
		})
	}
}

func TestOversizedReply(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		size      int
		wantClass providers.Class
		wantErr   bool
		tooLarge  bool
	}{
		{name: "ServiceUnavailable", status: 503, size: httpx.MaxBodySize + 1, wantClass: providers.Transient, wantErr: true, tooLarge: true},
		{name: "BadRequest", status: 400, size: 3 * httpx.MaxBodySize, wantClass: providers.Permanent, wantErr: true, tooLarge: true},
		{name: "OK", status: 200, size: httpx.MaxBodySize + 1, wantClass: providers.Permanent, wantErr: true, tooLarge: true},
		{name: "BadRequestExactlyLimit", status: 400, size: httpx.MaxBodySize, wantClass: providers.Permanent, wantErr: true},
		{name: "OKExactlyLimit", status: 200, size: httpx.MaxBodySize, wantClass: providers.Success},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write(bytes.Repeat([]byte("x"), tc.size))
			})
			_, err := c.ResendEmails(t.Context(), "1", ResendEmailsRequest{})
			require.Equal(t, tc.wantClass, providers.Classify(err))
			if !tc.wantErr {
				require.NoError(t, err)
				return
			}
			e := asError(t, err)
			if tc.tooLarge {
				require.Equal(t, fmt.Sprintf("digicert: HTTP %d: response body exceeds 1048576 bytes (1 MiB) (%s)", tc.status, tc.wantClass), e.Error())
				require.Nil(t, e.Body)
			} else {
				require.Len(t, e.Body, tc.size)
			}
		})
	}
}

func TestTimeoutOnHangingServer(t *testing.T) {
	t.Parallel()
	sim := digicerttest.NewServer(testKey)
	t.Cleanup(sim.Close)
	sim.SetDefault(digicerttest.Behavior{Hang: true})
	const timeout = 200 * time.Millisecond
	c := newClient(t, sim.URL(), WithTimeout(timeout))

	start := time.Now()
	_, err := c.ResendEmails(t.Context(), "7", ResendEmailsRequest{})
	elapsed := time.Since(start)

	e := asError(t, err)
	require.GreaterOrEqual(t, elapsed, timeout)
	require.Less(t, elapsed, quick)
	require.Equal(t, providers.Transient, e.Class)
	require.False(t, e.NotSent)
	require.Zero(t, e.StatusCode)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.True(t, strings.HasPrefix(e.Error(), "digicert: request failed: timed out after 200ms: "), e.Error())
	require.True(t, strings.HasSuffix(e.Error(), " (transient)"), e.Error())
}

func TestTimeoutWhileReadingBody(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"errors":[`)
		w.(http.Flusher).Flush()
		waitGone(t, r)
	}, WithTimeout(100*time.Millisecond))
	_, err := c.ResendEmails(t.Context(), "1", ResendEmailsRequest{})
	e := asError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, e.StatusCode)
	require.Equal(t, providers.Transient, e.Class)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	t.Run("BeforeCall", func(t *testing.T) {
		t.Parallel()
		sim := digicerttest.NewServer(testKey)
		t.Cleanup(sim.Close)
		c := newClient(t, sim.URL())
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := c.Resend(ctx, providers.Request{OrderID: "1"})
		e := asError(t, err)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, providers.Transient, e.Class)
		require.True(t, e.NotSent)
		require.Zero(t, sim.Count("1"))
	})
	t.Run("DuringRequest", func(t *testing.T) {
		t.Parallel()
		started := make(chan struct{})
		c, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client going away
			close(started)
			waitGone(t, r)
		})
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-started
			cancel()
		}()
		_, err := c.Resend(ctx, providers.Request{OrderID: "1"})
		e := asError(t, err)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, providers.Transient, e.Class)
		require.False(t, e.NotSent)
		require.Equal(t, "digicert: request failed: context canceled (transient)", e.Error())
	})
	t.Run("CallerDeadline", func(t *testing.T) {
		t.Parallel()
		sim := digicerttest.NewServer(testKey)
		t.Cleanup(sim.Close)
		sim.SetDefault(digicerttest.Behavior{Hang: true})
		c := newClient(t, sim.URL())
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, err := c.Resend(ctx, providers.Request{OrderID: "1"})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Equal(t, providers.Transient, providers.Classify(err))
	})
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	c := newClient(t, "http://"+addr+"/services/v2/")
	_, err = c.Resend(t.Context(), providers.Request{OrderID: "1"})
	e := asError(t, err)
	require.Equal(t, providers.Transient, e.Class)
	require.True(t, e.NotSent)
	require.Zero(t, e.StatusCode)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.True(t, strings.HasPrefix(e.Error(), "digicert: request not sent: dial tcp "+addr+": "), e.Error())
	require.True(t, strings.HasSuffix(e.Error(), "connection refused (transient)"), e.Error())
	d := e.Detail()
	require.True(t, d.NotSent)
	require.Contains(t, d.Message, "connection refused")
}

func TestTLS(t *testing.T) {
	t.Parallel()
	sim := digicerttest.NewTLSServer(testKey)
	t.Cleanup(sim.Close)

	t.Run("UntrustedCertificate", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, sim.URL())
		_, err := c.Resend(t.Context(), providers.Request{OrderID: "1"})
		e := asError(t, err)
		require.Equal(t, providers.Configuration, e.Class)
		require.True(t, e.NotSent)
		var verr *tls.CertificateVerificationError
		require.ErrorAs(t, err, &verr)
	})
	t.Run("TrustedCertificate", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, sim.URL(), WithHTTPClient(sim.Client()))
		res, err := c.Resend(t.Context(), providers.Request{OrderID: "2"})
		require.NoError(t, err)
		require.Equal(t, http.StatusNoContent, res.StatusCode)
	})
}

// TestTransportErrorClassification: the layer decides NotSent and whether
// the caller gave up or the call timed out; DigiCert keeps both and adds the
// class. The NotSent rule itself is tested in httpx and, end to end for both
// clients, in package providers.
func TestTransportErrorClassification(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	tests := []struct {
		name      string
		in        httpx.Error
		wantClass providers.Class
		wantIs    error
		wantText  string
	}{
		{name: "DNS", in: httpx.Error{Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}, NotSent: true},
			wantClass: providers.Transient, wantText: "digicert: request not sent: lookup x.invalid: no such host (transient)"},
		{name: "Dial", in: httpx.Error{Err: dial, NotSent: true}, wantClass: providers.Transient, wantIs: syscall.ECONNREFUSED},
		{name: "ResetAfterWrite", in: httpx.Error{Err: reset}, wantClass: providers.Transient, wantIs: syscall.ECONNRESET,
			wantText: "digicert: request failed: read tcp: connection reset by peer (transient)"},
		{name: "UnknownAuthority", in: httpx.Error{Err: x509.UnknownAuthorityError{}, NotSent: true}, wantClass: providers.Configuration},
		{name: "Hostname", in: httpx.Error{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "x"}, NotSent: true}, wantClass: providers.Configuration},
		{name: "Expired", in: httpx.Error{Err: &tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}, NotSent: true}, wantClass: providers.Configuration},
		{name: "Build", in: httpx.Error{Err: errors.New("bad header"), NotSent: true, Build: true}, wantClass: providers.Configuration},
		{name: "Cancelled", in: httpx.Error{Err: errors.New("net/http: request canceled"), Canceled: context.Canceled}, wantClass: providers.Transient, wantIs: context.Canceled,
			wantText: "digicert: request failed: context canceled: net/http: request canceled (transient)"},
		{name: "OwnDeadline", in: httpx.Error{Err: context.DeadlineExceeded, TimedOut: true}, wantClass: providers.Transient, wantIs: context.DeadlineExceeded,
			wantText: "digicert: request failed: timed out after 1s: context deadline exceeded (transient)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := tc.in
			e := transportError(&in, time.Second)
			require.Equal(t, tc.wantClass, e.Class)
			require.Equal(t, tc.in.NotSent, e.NotSent)
			if tc.wantIs != nil {
				require.ErrorIs(t, e, tc.wantIs)
			}
			if tc.wantText != "" {
				require.Equal(t, tc.wantText, e.Error())
			}
		})
	}
}

func TestRequestValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		orderID string
		body    ResendEmailsRequest
		wantErr string
	}{
		{name: "EmptyOrder", orderID: "", wantErr: "digicert: request not sent: invalid request: order ID is empty (permanent)"},
		{name: "DotDotOrder", orderID: "..", wantErr: `digicert: request not sent: invalid request: order ID ".." is not valid (permanent)`},
		{name: "EmptyDomain", orderID: "1", body: ResendEmailsRequest{DomainApprovalEmails: []DomainApprovalEmail{{Email: "a@b.c"}}},
			wantErr: "digicert: request not sent: invalid request: domain_approval_emails[0].domain is empty (permanent)"},
		{name: "EmptyEmail", orderID: "1", body: ResendEmailsRequest{DomainApprovalEmails: []DomainApprovalEmail{{Domain: "b.c", Email: "a@b.c"}, {Domain: "b.c"}}},
			wantErr: "digicert: request not sent: invalid request: domain_approval_emails[1].email is empty (permanent)"},
		{name: "DuplicatePair", orderID: "1", body: ResendEmailsRequest{DomainApprovalEmails: []DomainApprovalEmail{{Domain: "b.c", Email: "a@b.c"}, {Domain: "b.c", Email: "a@b.c"}}},
			wantErr: `digicert: request not sent: invalid request: domain_approval_emails[1] repeats domain "b.c" and email "a@b.c" (permanent)`},
	}
	sim := digicerttest.NewServer(testKey)
	t.Cleanup(sim.Close)
	c := newClient(t, sim.URL())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.ResendEmails(t.Context(), tc.orderID, tc.body)
			e := asError(t, err)
			require.Equal(t, tc.wantErr, e.Error())
			require.Equal(t, providers.Permanent, e.Class)
			require.True(t, e.NotSent)
			require.ErrorIs(t, err, ErrInvalidRequest)
		})
	}
	t.Cleanup(func() { require.Empty(t, sim.Requests()) })
}

func TestResendAdapter(t *testing.T) {
	t.Parallel()
	sim := digicerttest.NewServer(testKey)
	t.Cleanup(sim.Close)
	c := newClient(t, sim.URL())

	t.Run("UnsupportedAction", func(t *testing.T) {
		t.Parallel()
		_, err := c.Resend(t.Context(), providers.Request{OrderID: "500", Action: providers.ActionResendApproveEmail})
		require.ErrorIs(t, err, ErrInvalidRequest)
		d := providers.Describe(err)
		require.Equal(t, providers.Permanent, d.Class)
		require.Equal(t, providers.DigiCert, d.Provider)
		require.True(t, d.NotSent)
		require.Zero(t, sim.Count("500"))
	})
	for _, action := range []providers.Action{"", providers.ActionResendCertEmail} {
		t.Run("Action"+string(action), func(t *testing.T) {
			t.Parallel()
			orderID := "600"
			if action != "" {
				orderID = "601"
			}
			res, err := c.Resend(t.Context(), providers.Request{
				OrderID:        orderID,
				Action:         action,
				ApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}},
				Locale:         "en",
			})
			require.NoError(t, err)
			require.Equal(t, providers.Result{Provider: providers.DigiCert, StatusCode: http.StatusNoContent}, res)
			require.Equal(t, 1, sim.Count(orderID))
			var rec *digicerttest.Request
			for _, r := range sim.Requests() {
				if r.OrderID == orderID {
					rec = &r
				}
			}
			require.NotNil(t, rec)
			require.Equal(t, &digicerttest.ResendEmailsBody{
				DomainApprovalEmails: []digicerttest.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}},
				Locale:               "en",
			}, rec.Decoded)
			require.Equal(t, http.StatusNoContent, rec.Status)
		})
	}
}

func TestClassesAgainstSimulator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		behavior  digicerttest.Behavior
		key       string // client key; default testKey
		baseURL   func(sim *digicerttest.Server) string
		wantClass providers.Class
		wantCode  string
		wantAfter time.Duration
		wantErr   string
	}{
		{name: "Success", wantClass: providers.Success},
		{name: "RateLimitedRetryAfter", behavior: digicerttest.Behavior{RateLimited: 1, RetryAfter: 3 * time.Second},
			wantClass: providers.RateLimited, wantCode: "request_limit_exceeded", wantAfter: 3 * time.Second},
		{name: "RateLimitedDefaultWait", behavior: digicerttest.Behavior{RateLimited: 1},
			wantClass: providers.RateLimited, wantCode: "request_limit_exceeded", wantAfter: DefaultRateLimitWait},
		{name: "Transient503", behavior: digicerttest.Behavior{TransientFailures: 1}, wantClass: providers.Transient, wantCode: "service_unavailable"},
		{name: "OrderNotFound", behavior: digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order"},
			wantClass: providers.Permanent, wantCode: "not_found|order",
			wantErr: "digicert: 404 not_found|order: The specified order was not found. (permanent)"},
		{name: "OrderNotFoundCustomMessage", behavior: digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order", ErrorMessage: "Order not found"},
			wantClass: providers.Permanent, wantErr: "digicert: 404 not_found|order: Order not found (permanent)"},
		{name: "MissingPermission", behavior: digicerttest.Behavior{ErrorStatus: 403}, wantClass: providers.Configuration, wantCode: "access_denied|missing_permission"},
		{name: "Unauthorized", behavior: digicerttest.Behavior{ErrorStatus: 401}, wantClass: providers.Configuration, wantErr: "digicert: HTTP 401 (configuration)"},
		{name: "BadRequest", behavior: digicerttest.Behavior{ErrorStatus: 400, ErrorCode: "invalid_value:locale"}, wantClass: providers.Permanent, wantCode: "invalid_value:locale"},
		{name: "BadGatewayNoBody", behavior: digicerttest.Behavior{ErrorStatus: 502}, wantClass: providers.Transient, wantErr: "digicert: HTTP 502 (transient)"},
		{name: "RequestTimeout", behavior: digicerttest.Behavior{ErrorStatus: 408}, wantClass: providers.Transient},
		{name: "Redirect", behavior: digicerttest.Behavior{ErrorStatus: 302}, wantClass: providers.Configuration},
		{name: "WrongKey", key: "wrong-key", wantClass: providers.Configuration, wantCode: "access_denied|access_denied_invalid_key"},
		{name: "WrongBasePath", baseURL: func(s *digicerttest.Server) string { return strings.TrimSuffix(s.URL(), "v2/") + "v1/" },
			wantClass: providers.Configuration, wantCode: "not_found|route"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim := digicerttest.NewServer(testKey)
			t.Cleanup(sim.Close)
			sim.SetBehavior("36066061", tc.behavior)
			base := sim.URL()
			if tc.baseURL != nil {
				base = tc.baseURL(sim)
			}
			key := testKey
			if tc.key != "" {
				key = tc.key
			}
			c, err := New(WithBaseURL(base), WithAPIKey(key))
			require.NoError(t, err)
			_, err = c.Resend(t.Context(), providers.Request{OrderID: "36066061"})
			d := providers.Describe(err)
			require.Equal(t, tc.wantClass, d.Class, "%v", err)
			if tc.wantClass == providers.Success {
				require.NoError(t, err)
				return
			}
			if tc.wantCode != "" {
				require.Equal(t, tc.wantCode, d.Code)
			}
			require.Equal(t, tc.wantAfter, d.RetryAfter)
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
			}
			require.NotContains(t, err.Error(), key)
		})
	}
}

func TestRateLimitThenSuccess(t *testing.T) {
	t.Parallel()
	sim := digicerttest.NewServer(testKey)
	t.Cleanup(sim.Close)
	sim.SetBehavior("1", digicerttest.Behavior{RateLimited: 1, TransientFailures: 1})
	c := newClient(t, sim.URL())
	want := []providers.Class{providers.RateLimited, providers.Transient, providers.Success, providers.Success}
	for i, w := range want {
		_, err := c.Resend(t.Context(), providers.Request{OrderID: "1"})
		require.Equal(t, w, providers.Classify(err), "call %d: %v", i, err)
	}
	require.Equal(t, len(want), sim.Count("1"))
}

func TestKeyNeverLeaks(t *testing.T) {
	t.Parallel()
	sim := digicerttest.NewServer(testKey)
	t.Cleanup(sim.Close)
	sim.SetBehavior("404", digicerttest.Behavior{ErrorStatus: 404, ErrorCode: "not_found|order"})
	c := newClient(t, sim.URL(), WithTimeout(time.Second))
	wrongKey, err := New(WithBaseURL(sim.URL()), WithAPIKey(testKey+"x"))
	require.NoError(t, err)

	_, apiErr := c.Resend(t.Context(), providers.Request{OrderID: "404"})
	_, forbiddenErr := wrongKey.Resend(t.Context(), providers.Request{OrderID: "1"})
	_, invalidErr := c.Resend(t.Context(), providers.Request{OrderID: ""})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	refused := newClient(t, "http://"+addr+"/")
	_, refusedErr := refused.Resend(t.Context(), providers.Request{OrderID: "1"})
	_, newErr := New(WithAPIKey(testKey+"\n"), WithBaseURL("http://example.com/"))
	for _, e := range []error{apiErr, forbiddenErr, invalidErr, refusedErr, newErr} {
		require.Error(t, e)
	}

	values := []struct {
		name string
		v    any
	}{
		{"ClientPointer", c},
		{"ClientValue", *c},
		{"ClientInStruct", struct{ C *Client }{c}},
		{"WrongKeyClient", wrongKey},
		{"APIError", apiErr},
		{"ForbiddenError", forbiddenErr},
		{"InvalidError", invalidErr},
		{"RefusedError", refusedErr},
		{"NewError", newErr},
		{"Detail", providers.Describe(forbiddenErr)},
		{"Requests", sim.Requests()},
	}
	for _, tc := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			t.Run(tc.name+verb, func(t *testing.T) {
				t.Parallel()
				out := fmt.Sprintf(verb, tc.v)
				require.NotContains(t, out, testKey)
				require.NotContains(t, out, fmt.Sprintf("%x", testKey))
				if e, ok := tc.v.(error); ok {
					require.NotContains(t, e.Error(), testKey)
				}
			})
		}
	}
}
