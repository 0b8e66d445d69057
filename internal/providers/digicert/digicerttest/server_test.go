package digicerttest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const key = "sim-key-LEAKCHECK-0123"

type reply struct {
	Status int
	Header http.Header
	Body   []byte
	Errors []ErrorItem
}

// send makes a raw request; hdr values override the valid defaults, and an
// empty value removes the header.
func send(t *testing.T, s *Server, method, path string, hdr map[string]string, body string) reply {
	t.Helper()
	return sendCtx(t, t.Context(), s, method, path, hdr, body)
}

func sendCtx(t *testing.T, ctx context.Context, s *Server, method, path string, hdr map[string]string, body string) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(s.URL(), BasePath)+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-DC-DEVKEY", key)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := s.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := reply{Status: resp.StatusCode, Header: resp.Header, Body: b}
	if len(b) > 0 {
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		var doc struct{ Errors []ErrorItem }
		require.NoError(t, json.Unmarshal(b, &doc))
		r.Errors = doc.Errors
	}
	return r
}

func orderPath(id string) string { return BasePath + "order/certificate/" + id + "/resend-emails" }

func codes(items []ErrorItem) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Code)
		if it.Message == "" {
			out = append(out, "MISSING MESSAGE")
		}
	}
	return out
}

func TestValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		method     string
		path       string
		hdr        map[string]string
		body       string
		wantStatus int
		wantCodes  []string
	}{
		{name: "Success", body: `{"domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en"}`, wantStatus: 204},
		{name: "EmptyObject", body: `{}`, wantStatus: 204},
		{name: "EmailDomainAccepted", body: `{"domain_approval_emails":[{"domain":"a.b","email":"x@b","email_domain":"b"}]}`, wantStatus: 204},
		{name: "CharsetUTF8", hdr: map[string]string{"Content-Type": "application/json; charset=UTF-8"}, body: `{}`, wantStatus: 204},
		{name: "WrongKey", hdr: map[string]string{"X-DC-DEVKEY": "nope"}, body: `{}`, wantStatus: 403,
			wantCodes: []string{"access_denied|access_denied_invalid_key"}},
		{name: "KeyPrefix", hdr: map[string]string{"X-DC-DEVKEY": key[:len(key)-1]}, body: `{}`, wantStatus: 403,
			wantCodes: []string{"access_denied|access_denied_invalid_key"}},
		{name: "MissingKey", hdr: map[string]string{"X-DC-DEVKEY": ""}, body: `{}`, wantStatus: 403,
			wantCodes: []string{"access_denied|access_denied_invalid_key"}},
		{name: "WrongMethod", method: http.MethodPost, body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "GET", method: http.MethodGet, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "WrongPath", path: BasePath + "order/certificate/1/resend-email", body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "RootBase", path: "/order/certificate/1/resend-emails", body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "ExtraSegment", path: BasePath + "order/certificate/1/2/resend-emails", body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "Query", path: orderPath("1") + "?x=1", body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|route"}},
		{name: "NonNumericOrder", path: orderPath("1%2F..%2F2"), body: `{}`, wantStatus: 404, wantCodes: []string{"not_found|order"}},
		{name: "NoContentType", hdr: map[string]string{"Content-Type": ""}, body: `{}`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "XML", hdr: map[string]string{"Content-Type": "application/xml"}, body: `<x/>`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "Latin1", hdr: map[string]string{"Content-Type": "application/json; charset=iso-8859-1"}, body: `{}`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "EmptyBody", body: ``, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "Malformed", body: `{"locale":`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "UnknownField", body: `{"locale":"en","emails":[]}`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "WrongType", body: `{"locale":1}`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "TrailingData", body: `{}{}`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "Null", body: `null`, wantStatus: 400, wantCodes: []string{"bad_request_format"}},
		{name: "SeveralMissing", body: `{"domain_approval_emails":[{"domain":"","email":""},{"domain":"ok.com","email":"a@ok.com"},{"email":"b@c.d"}]}`,
			wantStatus: 400, wantCodes: []string{
				"required_param:domain_approval_emails.domain",
				"required_param:domain_approval_emails.email",
				"required_param:domain_approval_emails.domain",
			}},
	}
	s := NewServer(key)
	t.Cleanup(s.Close)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			method := tc.method
			if method == "" {
				method = http.MethodPut
			}
			path := tc.path
			if path == "" {
				path = orderPath("1")
			}
			r := send(t, s, method, path, tc.hdr, tc.body)
			require.Equal(t, tc.wantStatus, r.Status, "%s", r.Body)
			require.Equal(t, tc.wantCodes, codes(r.Errors))
			if tc.wantStatus == http.StatusNoContent {
				require.Empty(t, r.Body)
			}
		})
	}
}

func TestBehaviors(t *testing.T) {
	t.Parallel()
	type step struct {
		status     int
		code       string
		message    string
		retryAfter string
	}
	tests := []struct {
		name     string
		behavior Behavior
		steps    []step
	}{
		{name: "Zero", steps: []step{{status: 204}, {status: 204}}},
		{name: "RateLimited", behavior: Behavior{RateLimited: 2}, steps: []step{
			{status: 429, code: "request_limit_exceeded", message: "Service unavailable, please limit request volume"},
			{status: 429, code: "request_limit_exceeded"}, {status: 204},
		}},
		{name: "RateLimitedRetryAfterRoundsUp", behavior: Behavior{RateLimited: 1, RetryAfter: 1500 * time.Millisecond}, steps: []step{
			{status: 429, code: "request_limit_exceeded", retryAfter: "2"}, {status: 204},
		}},
		{name: "TransientFailures", behavior: Behavior{TransientFailures: 2}, steps: []step{
			{status: 503, code: "service_unavailable"}, {status: 503, code: "service_unavailable"}, {status: 204},
		}},
		{name: "PhasesInOrder", behavior: Behavior{RateLimited: 1, TransientFailures: 1, ErrorStatus: 404, ErrorCode: "not_found|order"}, steps: []step{
			{status: 429, code: "request_limit_exceeded"}, {status: 503, code: "service_unavailable"},
			{status: 404, code: "not_found|order", message: "The specified order was not found."},
			{status: 404, code: "not_found|order"},
		}},
		{name: "ErrorDefaultCode", behavior: Behavior{ErrorStatus: 403}, steps: []step{
			{status: 403, code: "access_denied|missing_permission"},
		}},
		{name: "ErrorCustom", behavior: Behavior{ErrorStatus: 400, ErrorCode: "invalid_value:locale", ErrorMessage: "Bad locale."}, steps: []step{
			{status: 400, code: "invalid_value:locale", message: "Bad locale."},
		}},
		{name: "ErrorNoBody", behavior: Behavior{ErrorStatus: 502}, steps: []step{{status: 502}}},
		{name: "Redirect", behavior: Behavior{ErrorStatus: 301}, steps: []step{{status: 301}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewServer(key)
			t.Cleanup(s.Close)
			s.SetBehavior("7", tc.behavior)
			client := s.Client()
			client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			for i, st := range tc.steps {
				r := send(t, s, http.MethodPut, orderPath("7"), nil, `{}`)
				require.Equal(t, st.status, r.Status, "step %d", i)
				if st.code == "" {
					require.Empty(t, r.Body, "step %d", i)
				} else {
					require.Len(t, r.Errors, 1)
					require.Equal(t, st.code, r.Errors[0].Code)
					require.NotEmpty(t, r.Errors[0].Message)
				}
				if st.message != "" {
					require.Equal(t, st.message, r.Errors[0].Message)
				}
				require.Equal(t, st.retryAfter, r.Header.Get("Retry-After"))
				if st.status == 301 {
					require.NotEmpty(t, r.Header.Get("Location"))
				}
			}
			// Other orders keep the default, and rejected requests do not
			// advance the phases.
			require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("8"), nil, `{}`).Status)
			require.Equal(t, len(tc.steps), s.Count("7"))
		})
	}
}

func TestPhasesCountOnlyValidRequests(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	t.Cleanup(s.Close)
	s.SetBehavior("9", Behavior{RateLimited: 1})
	require.Equal(t, 403, send(t, s, http.MethodPut, orderPath("9"), map[string]string{"X-DC-DEVKEY": "bad"}, `{}`).Status)
	require.Equal(t, 400, send(t, s, http.MethodPut, orderPath("9"), nil, `{`).Status)
	require.Equal(t, 429, send(t, s, http.MethodPut, orderPath("9"), nil, `{}`).Status)
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("9"), nil, `{}`).Status)
	require.Equal(t, 4, s.Count("9"))

	// SetBehavior restarts the phases; SetDefault applies to other orders.
	s.SetBehavior("9", Behavior{RateLimited: 1})
	require.Equal(t, 429, send(t, s, http.MethodPut, orderPath("9"), nil, `{}`).Status)
	s.SetDefault(Behavior{ErrorStatus: 404, ErrorCode: "not_found|order"})
	require.Equal(t, 404, send(t, s, http.MethodPut, orderPath("10"), nil, `{}`).Status)
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("9"), nil, `{}`).Status)
	s.SetDefault(Behavior{})
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("10"), nil, `{}`).Status)
}

func TestDelay(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	t.Cleanup(s.Close)
	const delay = 50 * time.Millisecond
	s.SetBehavior("1", Behavior{Delay: delay})

	start := time.Now()
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("1"), nil, `{}`).Status)
	require.GreaterOrEqual(t, time.Since(start), delay)

	// A client that gives up first is not answered.
	s.SetBehavior("2", Behavior{Delay: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.URL()+"order/certificate/2/resend-emails", strings.NewReader(`{}`))
	require.NoError(t, err)
	_, err = s.Client().Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool { return s.Count("2") == 1 }, time.Second, 5*time.Millisecond)
}

func TestHangAndClose(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	s.SetDefault(Behavior{Hang: true})

	errc := make(chan error, 1)
	go func() {
		req, err := http.NewRequest(http.MethodPut, s.URL()+"order/certificate/3/resend-emails", strings.NewReader(`{}`))
		if err != nil {
			errc <- err
			return
		}
		req.Header.Set("X-DC-DEVKEY", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := s.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return s.Count("3") == 1 }, 5*time.Second, 2*time.Millisecond)

	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on a hung request")
	}
	select {
	case err := <-errc:
		require.Error(t, err, "a hung request must not be answered")
	case <-time.After(5 * time.Second):
		t.Fatal("client still waiting after Close")
	}
	reqs := s.Requests()
	require.Len(t, reqs, 1)
	require.Zero(t, reqs[0].Status)
	s.Close() // idempotent
}

func TestRequestsRecord(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	t.Cleanup(s.Close)
	body := `{"domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"en"}`
	before := time.Now()
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("11"), map[string]string{"User-Agent": "test/1"}, body).Status)
	require.Equal(t, 403, send(t, s, http.MethodPut, orderPath("12"), map[string]string{"X-DC-DEVKEY": "wrong"}, `{}`).Status)
	require.Equal(t, 404, send(t, s, http.MethodGet, "/elsewhere", nil, ``).Status)

	reqs := s.Requests()
	require.Len(t, reqs, 3)
	r := reqs[0]
	require.Equal(t, http.MethodPut, r.Method)
	require.Equal(t, orderPath("11"), r.Path)
	require.Equal(t, "11", r.OrderID)
	require.Equal(t, []string{Redacted}, r.Header.Values("X-DC-DEVKEY"))
	require.Equal(t, "test/1", r.Header.Get("User-Agent"))
	require.Equal(t, body, string(r.Body))
	require.Equal(t, &ResendEmailsBody{
		DomainApprovalEmails: []ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}},
		Locale:               "en",
	}, r.Decoded)
	require.Equal(t, 204, r.Status)
	require.False(t, r.Time.Before(before))

	require.Equal(t, "12", reqs[1].OrderID)
	require.Equal(t, 403, reqs[1].Status)
	require.Nil(t, reqs[1].Decoded)
	require.Equal(t, []string{Redacted}, reqs[1].Header.Values("X-DC-DEVKEY"))
	require.Equal(t, "", reqs[2].OrderID)
	require.Equal(t, 404, reqs[2].Status)
	require.False(t, reqs[1].Time.Before(r.Time))

	// The record is a copy.
	reqs[0].Body[0] = 'X'
	reqs[0].Header.Set("X-Mutated", "1")
	require.Equal(t, body, string(s.Requests()[0].Body))
	require.Empty(t, s.Requests()[0].Header.Get("X-Mutated"))

	var all bytes.Buffer
	for _, r := range s.Requests() {
		all.WriteString(strings.Join(r.Header.Values("X-DC-DEVKEY"), ","))
		all.Write(r.Body)
	}
	require.NotContains(t, all.String(), key)
	require.Equal(t, 1, s.Count("11"))
	require.Equal(t, 1, s.Count("12"))
	require.Zero(t, s.Count("13"))
}

func TestConcurrent(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	t.Cleanup(s.Close)
	s.SetBehavior("1", Behavior{RateLimited: 10})
	const n = 50
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses <- send(t, s, http.MethodPut, orderPath("1"), nil, `{}`).Status
			_ = s.Requests()
		}()
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for st := range statuses {
		count[st]++
	}
	require.Equal(t, map[int]int{429: 10, 204: n - 10}, count)
	require.Equal(t, n, s.Count("1"))
	require.Len(t, s.Requests(), n)
}

func TestTLSServer(t *testing.T) {
	t.Parallel()
	s := NewTLSServer(key)
	t.Cleanup(s.Close)
	require.True(t, strings.HasPrefix(s.URL(), "https://127.0.0.1:"))
	require.True(t, strings.HasSuffix(s.URL(), "/services/v2/"))
	require.Equal(t, 204, send(t, s, http.MethodPut, orderPath("1"), nil, `{}`).Status)

	_, err := http.DefaultClient.Get(s.URL())
	require.Error(t, err, "the default client must not trust the test certificate")
}

func TestURL(t *testing.T) {
	t.Parallel()
	s := NewServer(key)
	t.Cleanup(s.Close)
	require.True(t, strings.HasPrefix(s.URL(), "http://127.0.0.1:"))
	require.True(t, strings.HasSuffix(s.URL(), "/services/v2/"))
}
