package opensrstest_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/opensrs"
	"github.com/certmail/certmail/internal/providers/opensrs/opensrstest"
)

const (
	user = "myreseller"
	key  = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
)

// envelope builds a request body; attrs is the raw inner XML of attributes.
func envelope(protocol, action, object, attrs string) string {
	return "<?xml version='1.0' encoding='UTF-8' standalone='no' ?>\n" +
		"<!DOCTYPE OPS_envelope SYSTEM 'ops.dtd'>\n<OPS_envelope>\n<header><version>0.9</version></header>\n" +
		"<body><data_block><dt_assoc>\n" +
		`<item key="protocol">` + protocol + "</item>\n" +
		`<item key="action">` + action + "</item>\n" +
		`<item key="object">` + object + "</item>\n" +
		`<item key="attributes"><dt_assoc>` + attrs + "</dt_assoc></item>\n" +
		"</dt_assoc></data_block></body>\n</OPS_envelope>"
}

func certBody(order string) string {
	return envelope("XCP", "resend_cert_email", "trust_service", `<item key="order_id">`+order+`</item>`)
}

type answer struct {
	status  int
	success string
	code    string
	text    string
	orderID string
	body    string
}

var itemRE = regexp.MustCompile(`<item key="([a-z_]+)">([^<]*)</item>`)

func parseAnswer(status int, body []byte) answer {
	a := answer{status: status, body: string(body)}
	for _, m := range itemRE.FindAllStringSubmatch(string(body), -1) {
		switch m[1] {
		case "is_success":
			a.success = m[2]
		case "response_code":
			a.code = m[2]
		case "response_text":
			a.text = m[2]
		case "order_id":
			a.orderID = m[2]
		}
	}
	return a
}

// post sends a signed request; mutate may alter it afterwards.
func post(t *testing.T, s *opensrstest.Server, body string, mutate func(*http.Request)) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL(), strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "text/xml")
	req.Header.Set("X-Username", user)
	req.Header.Set("X-Signature", opensrs.Sign([]byte(body), key))
	if mutate != nil {
		mutate(req)
	}
	resp, err := s.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return parseAnswer(resp.StatusCode, data)
}

func newServer(t *testing.T) *opensrstest.Server {
	t.Helper()
	s := opensrstest.NewServer(user, key)
	t.Cleanup(s.Close)
	return s
}

func TestSuccessReply(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	require.True(t, strings.HasSuffix(s.URL(), "/"))
	a := post(t, s, certBody("1799"), nil)
	require.Equal(t, answer{status: 200, success: "1", code: "200", text: "Command completed successfully.", orderID: "1799", body: a.body}, a)
	require.Contains(t, a.body, `<item key="action">REPLY</item>`)
	require.Contains(t, a.body, `<item key="object">TRUST_SERVICE</item>`)
	require.True(t, strings.HasPrefix(a.body, "<?xml version='1.0' encoding='UTF-8' standalone='no'?>\n<!DOCTYPE OPS_envelope SYSTEM 'ops.dtd'>\n"))
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	body := certBody("1799")
	tests := []struct {
		name   string
		mutate func(*http.Request)
	}{
		{"WrongKey", func(r *http.Request) { r.Header.Set("X-Signature", opensrs.Sign([]byte(body), key+"x")) }},
		{"WrongUser", func(r *http.Request) { r.Header.Set("X-Username", "subuser") }},
		{"NoSignature", func(r *http.Request) { r.Header.Del("X-Signature") }},
		{"NoUsername", func(r *http.Request) { r.Header.Del("X-Username") }},
		{"UppercaseSignature", func(r *http.Request) {
			r.Header.Set("X-Signature", strings.ToUpper(opensrs.Sign([]byte(body), key)))
		}},
		{"SignedOtherBytes", func(r *http.Request) { r.Header.Set("X-Signature", opensrs.Sign([]byte(body+"\n"), key)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t)
			a := post(t, s, body, tc.mutate)
			require.Equal(t, "0", a.success)
			require.Equal(t, "401", a.code)
			require.Equal(t, "Authentication Error", a.text)
			reqs := s.Requests()
			require.Len(t, reqs, 1)
			require.Equal(t, opensrstest.Outcome{StatusCode: 200, Code: 401, Text: "Authentication Error"}, reqs[0].Outcome)
		})
	}
}

func TestEnvelopeValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       string
		mutate     func(*http.Request)
		wantStatus int
		wantCode   string
		wantText   string
	}{
		{"UppercaseActionAccepted", envelope("XCP", "RESEND_CERT_EMAIL", "TRUST_SERVICE", `<item key="order_id">1</item>`), nil, 200, "200", "Command completed"},
		{"ApproveEmail", envelope("XCP", "resend_approve_email", "trust_service", `<item key="order_id">1</item>`), nil, 200, "200", "Command completed"},
		{"GET", certBody("1"), func(r *http.Request) { r.Method = http.MethodGet }, 405, "", ""},
		{"WrongContentType", certBody("1"), func(r *http.Request) { r.Header.Set("Content-Type", "application/xml") }, 200, "400", "Content-Type"},
		{"Chunked", certBody("1"), func(r *http.Request) {
			r.ContentLength = -1
			r.Body = io.NopCloser(strings.NewReader(certBody("1")))
			r.GetBody = nil
		}, 200, "400", "Content-Length"},
		{"Unparseable", "<OPS_envelope><body>", nil, 200, "400", "unparseable"},
		{"NotOPS", "<html/>", nil, 200, "400", "unparseable"},
		{"WrongProtocol", envelope("XML", "resend_cert_email", "trust_service", `<item key="order_id">1</item>`), nil, 200, "400", "protocol"},
		{"WrongObject", envelope("XCP", "resend_cert_email", "domain", `<item key="order_id">1</item>`), nil, 200, "430", "unknown object"},
		{"UnknownAction", envelope("XCP", "resend_approver_email", "trust_service", `<item key="order_id">1</item>`), nil, 200, "430", "Invalid Command"},
		{"MissingOrderID", envelope("XCP", "resend_cert_email", "trust_service", ``), nil, 200, "460", "Missing required field"},
		{"EmptyOrderID", certBody(""), nil, 200, "460", "Missing required field"},
		{"NonNumericOrderID", certBody("17a9"), nil, 200, "465", "Invalid data"},
		{"EscapedInjection", certBody("1&lt;/item&gt;"), nil, 200, "465", "Invalid data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t)
			a := post(t, s, tc.body, tc.mutate)
			require.Equal(t, tc.wantStatus, a.status, a.body)
			require.Equal(t, tc.wantCode, a.code, a.body)
			require.Contains(t, a.text, tc.wantText)
			if tc.wantCode != "" && tc.wantCode != "200" {
				require.Equal(t, "0", a.success)
			}
		})
	}
}

func TestBehaviors(t *testing.T) {
	t.Parallel()
	t.Run("RateLimitedThenTransientThenError", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("7", opensrstest.Behavior{RateLimited: 2, TransientFailures: 1, ErrorCode: 480})
		var got []string
		for range 5 {
			a := post(t, s, certBody("7"), nil)
			got = append(got, fmt.Sprintf("%d/%s/%s", a.status, a.code, a.text))
		}
		require.Equal(t, []string{
			"200/300/Max command rate exceeded",
			"200/300/Max command rate exceeded",
			"503//",
			"200/480/Item not found",
			"200/480/Item not found",
		}, got)
		require.Equal(t, 5, s.Count("7"))
		// Other orders are unaffected.
		require.Equal(t, "200", post(t, s, certBody("8"), nil).code)
	})
	t.Run("TransientFailuresThenSuccess", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{TransientFailures: 1})
		a := post(t, s, certBody("1"), nil)
		require.Equal(t, 503, a.status)
		require.Empty(t, a.body)
		require.Equal(t, "200", post(t, s, certBody("1"), nil).code)
	})
	t.Run("ErrorText", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{ErrorCode: 400, ErrorText: "Order is not completed & <so> on"})
		a := post(t, s, certBody("1"), nil)
		require.Equal(t, "400", a.code)
		require.Equal(t, "Order is not completed &amp; &lt;so&gt; on", a.text)
	})
	t.Run("SetBehaviorResetsCounters", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{RateLimited: 1})
		require.Equal(t, "300", post(t, s, certBody("1"), nil).code)
		s.SetBehavior("1", opensrstest.Behavior{RateLimited: 1})
		require.Equal(t, "300", post(t, s, certBody("1"), nil).code)
		require.Equal(t, "200", post(t, s, certBody("1"), nil).code)
	})
	t.Run("Default", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetDefault(opensrstest.Behavior{ErrorCode: 486})
		s.SetBehavior("2", opensrstest.Behavior{})
		require.Equal(t, "486", post(t, s, certBody("1"), nil).code)
		require.Equal(t, "Item exists in a processing state", post(t, s, certBody("1"), nil).text)
		require.Equal(t, "200", post(t, s, certBody("2"), nil).code)
	})
	t.Run("AuthBeforeBehavior", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{RateLimited: 1})
		a := post(t, s, certBody("1"), func(r *http.Request) { r.Header.Set("X-Username", "x") })
		require.Equal(t, "401", a.code)
		require.Equal(t, "300", post(t, s, certBody("1"), nil).code, "rejected requests do not consume the script")
	})
	t.Run("Delay", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{Delay: 50 * time.Millisecond})
		start := time.Now()
		require.Equal(t, "200", post(t, s, certBody("1"), nil).code)
		require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	})
	t.Run("HangUntilClientGivesUp", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{Hang: true})
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		body := certBody("1")
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL(), strings.NewReader(body))
		require.NoError(t, err)
		_, err = s.Client().Do(req)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Eventually(t, func() bool {
			r := s.Requests()
			return len(r) == 1 && r[0].Outcome.Text != ""
		}, 2*time.Second, 5*time.Millisecond)
		require.Equal(t, opensrstest.Outcome{Text: "hung until the client gave up"}, s.Requests()[0].Outcome)
	})
	t.Run("IPNotAllowed", func(t *testing.T) {
		t.Parallel()
		s := newServer(t)
		s.SetBehavior("1", opensrstest.Behavior{IPNotAllowed: true})
		u, err := url.Parse(s.URL())
		require.NoError(t, err)
		conn, err := net.Dial("tcp", u.Host)
		require.NoError(t, err)
		defer conn.Close()
		body := certBody("1")
		_, err = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml\r\nX-Username: %s\r\nX-Signature: %s\r\nContent-Length: %d\r\n\r\n%s",
			u.Host, user, opensrs.Sign([]byte(body), key), len(body), body)
		require.NoError(t, err)
		raw, err := io.ReadAll(conn)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(raw, []byte("<?xml")), "no HTTP status line: %q", raw)
		require.Equal(t, opensrstest.IPDeniedBody(), raw)
		require.Contains(t, string(raw), "Access denied: invalid IP address")
		_, err = http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
		require.ErrorContains(t, err, "malformed HTTP")
	})
}

func TestRequestsRecorded(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	before := time.Now()
	body := certBody("1799")
	post(t, s, body, func(r *http.Request) { r.Header.Set("User-Agent", "probe/1") })
	post(t, s, envelope("XCP", "resend_approve_email", "trust_service", `<item key="order_id">12</item>`), nil)
	reqs := s.Requests()
	require.Len(t, reqs, 2)
	r := reqs[0]
	require.False(t, r.Time.Before(before))
	require.Equal(t, http.MethodPost, r.Method)
	require.Equal(t, "resend_cert_email", r.Action)
	require.Equal(t, "trust_service", r.Object)
	require.Equal(t, "1799", r.OrderID)
	require.Equal(t, user, r.Username)
	require.Equal(t, opensrs.Sign([]byte(body), key), r.Signature)
	require.Equal(t, "probe/1", r.Header.Get("User-Agent"))
	require.Equal(t, body, string(r.Body))
	require.Equal(t, opensrstest.Outcome{StatusCode: 200, Success: true, Code: 200, Text: "Command completed successfully."}, r.Outcome)
	require.Equal(t, "resend_approve_email", reqs[1].Action)
	require.Equal(t, 1, s.Count("12"))
	require.Zero(t, s.Count("nope"))

	// Requests returns copies.
	reqs[0].Body[0] = 'X'
	reqs[0].Header.Set("X-Username", "changed")
	require.Equal(t, body, string(s.Requests()[0].Body))
	require.Equal(t, user, s.Requests()[0].Username)
	require.Equal(t, user, s.Requests()[0].Header.Get("X-Username"))
}

func TestConcurrent(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	s.SetDefault(opensrstest.Behavior{RateLimited: 1})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			order := strconv.Itoa(i % 4)
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL(), strings.NewReader(certBody(order)))
			req.Header.Set("Content-Type", "text/xml")
			req.Header.Set("X-Username", user)
			req.Header.Set("X-Signature", opensrs.Sign([]byte(certBody(order)), key))
			resp, err := s.Client().Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
			_ = s.Requests()
		})
	}
	wg.Wait()
	rate := 0
	for _, r := range s.Requests() {
		if r.Outcome.Code == 300 {
			rate++
		}
	}
	require.Equal(t, 4, rate, "exactly the first request of each order is rate-limited")
	for i := range 4 {
		require.Equal(t, 10, s.Count(strconv.Itoa(i)))
	}
}

func TestCloseReleasesHungRequests(t *testing.T) {
	t.Parallel()
	s := opensrstest.NewServer(user, key)
	s.SetDefault(opensrstest.Behavior{Hang: true})
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, s.URL(), strings.NewReader(certBody("1")))
		req.Header.Set("Content-Type", "text/xml")
		_, err := s.Client().Do(req)
		errc <- err
	}()
	require.Eventually(t, func() bool { return s.Count("1") == 1 }, 2*time.Second, time.Millisecond)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
	require.Error(t, <-errc)
	s.Close() // idempotent
}

func TestTLSServer(t *testing.T) {
	t.Parallel()
	s := opensrstest.NewTLSServer(user, key)
	t.Cleanup(s.Close)
	require.True(t, strings.HasPrefix(s.URL(), "https://"))
	require.Equal(t, "200", post(t, s, certBody("5"), nil).code)
	// An HTTP client that does not trust the test CA fails.
	_, err := http.Post(s.URL(), "text/xml", strings.NewReader(certBody("5")))
	require.Error(t, err)
}

func TestDefaultText(t *testing.T) {
	t.Parallel()
	for _, code := range []int{200, 250, 300, 310, 350, 400, 401, 404, 410, 415, 430, 435, 437, 440, 445, 447, 460, 465, 480, 485, 486, 487, 705, 999} {
		require.NotEmpty(t, opensrstest.DefaultText(code), code)
	}
}

// TestLoadMeasuresInFlight: the server counts requests in flight from
// arrival to answer: three concurrent delayed requests make a Max of 3, and
// the time at each level adds up to the span from the first arrival.
func TestLoadMeasuresInFlight(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	s.SetDefault(opensrstest.Behavior{Delay: 200 * time.Millisecond})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { post(t, s, certBody("1799"), nil) })
	}
	wg.Wait()
	l := s.Load()
	require.Zero(t, l.Now)
	require.Equal(t, 3, l.Max)
	require.GreaterOrEqual(t, l.Span(), 200*time.Millisecond)
	require.Len(t, l.At, 4, "levels 0 to 3 were seen")
	require.Greater(t, l.AtLeast(1), 0.9, "something was in flight nearly all the time")
	require.Equal(t, 1.0, l.AtLeast(0))

	s.ResetLoad()
	post(t, s, certBody("1799"), nil)
	l = s.Load()
	require.Equal(t, 1, l.Max, "a reset starts afresh")
	require.Zero(t, l.AtLeast(2))
}
