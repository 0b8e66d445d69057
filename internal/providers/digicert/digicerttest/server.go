// Package digicerttest is an in-process simulator of the DigiCert
// CertCentral resend-emails endpoint for tests, demos and benchmarks.
//
// It answers PUT /services/v2/order/certificate/{order_id}/resend-emails
// like CertCentral: it checks X-DC-DEVKEY exactly (403
// access_denied|access_denied_invalid_key), the route (404
// not_found|route), the Content-Type and the JSON body (400
// bad_request_format, required_param:…), and answers 204 with an empty body.
// Per-order Behavior injects rate limiting, 5xx failures, fixed error
// replies, delays and hangs. It never sleeps unless a Behavior asks it to.
//
// The simulator does not import the digicert client, so it checks the wire
// format independently.
package digicerttest

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BasePath is the path under which the simulator serves the API.
const BasePath = "/services/v2/"

// Redacted replaces the X-DC-DEVKEY value in recorded headers.
const Redacted = "[redacted]"

const maxBody = 1 << 20

// Behavior scripts the answers for one order (or, via SetDefault, for every
// order without its own). Phases apply in field order to the requests that
// pass authentication and validation: first RateLimited answers 429, then
// TransientFailures answers 503, then ErrorStatus (if set) forever, else 204.
// Setting a behavior restarts its phases.
type Behavior struct {
	RateLimited       int           // first N requests for the order: 429 request_limit_exceeded
	RetryAfter        time.Duration // if >0, sent as Retry-After seconds with those 429s
	TransientFailures int           // next N requests: HTTP 503 with an errors body
	ErrorStatus       int           // if non-zero, every later request fails with this HTTP status ...
	ErrorCode         string        // ... and this code (e.g. "not_found|order") ...
	ErrorMessage      string        // ... and message (sensible default per code if empty)
	Delay             time.Duration // wait before answering (respecting request ctx / server close)
	Hang              bool          // never answer until the client gives up or the server closes
	// Resets: the first N requests for the order (counted apart from the
	// phases, before anything else) are read whole, then their connection is
	// reset (RST) without an answer. Hangs: the next N hang as with Hang.
	Resets int
	Hangs  int
}

// ApprovalEmail is one decoded domain_approval_emails entry.
type ApprovalEmail struct {
	Domain      string `json:"domain"`
	Email       string `json:"email"`
	EmailDomain string `json:"email_domain,omitempty"`
}

// ResendEmailsBody is the decoded request body.
type ResendEmailsBody struct {
	DomainApprovalEmails []ApprovalEmail `json:"domain_approval_emails,omitempty"`
	Locale               string          `json:"locale,omitempty"`
}

// Request records one request the simulator received.
type Request struct {
	Time    time.Time
	Method  string
	Path    string // escaped path, as on the wire
	OrderID string // unescaped order_id path segment, "" if the route did not match
	// Header is a copy of the request header with X-DC-DEVKEY values
	// replaced by Redacted.
	Header http.Header
	Body   []byte
	// Decoded is the decoded body, nil if it was not valid.
	Decoded *ResendEmailsBody
	// Status is the status answered; 0 while pending or when the request
	// was abandoned (client gave up, server closed).
	Status int
}

// ErrorItem is one entry of an error reply.
type ErrorItem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Server is the simulator. It is safe for concurrent use.
type Server struct {
	srv    *httptest.Server
	apiKey string

	closeOnce sync.Once
	closed    chan struct{}

	mu        sync.Mutex
	behaviors map[string]Behavior
	def       Behavior
	phase     map[string]int // order → requests that reached the behavior stage
	counts    map[string]int // order → all requests routed to the order
	pre       map[string]int // order → requests counted for Resets and Hangs
	requests  []*Request
}

// NewServer starts a plain-HTTP simulator on 127.0.0.1 that accepts apiKey.
func NewServer(apiKey string) *Server {
	s := newServer(apiKey)
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// NewTLSServer starts a TLS simulator; Client returns an *http.Client that
// trusts its certificate.
func NewTLSServer(apiKey string) *Server {
	s := newServer(apiKey)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// Clients that reject the test certificate are expected; keep the
	// handshake errors out of test logs.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	return s
}

// NewServerOn serves plain HTTP on l, a listener the caller opened (the
// standalone simulator of cmd/simulators listens on a fixed loopback port);
// Close closes l.
func NewServerOn(l net.Listener, apiKey string) *Server {
	s := newServer(apiKey)
	s.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}}
	s.srv.Start()
	return s
}

func newServer(apiKey string) *Server {
	return &Server{
		apiKey:    apiKey,
		closed:    make(chan struct{}),
		behaviors: make(map[string]Behavior),
		phase:     make(map[string]int),
		counts:    make(map[string]int),
		pre:       make(map[string]int),
	}
}

// URL returns the API base URL, ending in "/services/v2/".
func (s *Server) URL() string { return s.srv.URL + BasePath }

// Client returns an HTTP client for the server; for a TLS server it trusts
// the server's certificate.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// SetBehavior scripts the answers for orderID and restarts its phases.
func (s *Server) SetBehavior(orderID string, b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behaviors[orderID] = b
	delete(s.phase, orderID)
	delete(s.pre, orderID)
}

// SetDefault scripts the answers for orders without their own behavior and
// restarts their phases. The zero Behavior answers 204.
func (s *Server) SetDefault(b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.def = b
	for id := range s.phase {
		if _, ok := s.behaviors[id]; !ok {
			delete(s.phase, id)
		}
	}
}

// Requests returns a copy of every request received, in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
		out[i].Header = r.Header.Clone()
		out[i].Body = bytes.Clone(r.Body)
		if r.Decoded != nil {
			d := *r.Decoded
			d.DomainApprovalEmails = append([]ApprovalEmail(nil), r.Decoded.DomainApprovalEmails...)
			out[i].Decoded = &d
		}
	}
	return out
}

// Count returns how many requests were routed to orderID, whatever the
// answer.
func (s *Server) Count(orderID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[orderID]
}

// Close aborts pending (delayed or hung) requests and shuts the server down.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// Default messages per code, as close to CertCentral's as documented.
var defaultMessages = map[string]string{
	"not_found|order":                         "The specified order was not found.",
	"not_found|route":                         "The requested route was not found.",
	"access_denied|access_denied_invalid_key": "Invalid API key.",
	"access_denied|missing_permission":        "You do not have permission to perform this action.",
	"request_limit_exceeded":                  "Service unavailable, please limit request volume",
	"bad_request_format":                      "The request was not properly formatted.",
	"service_unavailable":                     "The service is temporarily unavailable.",
	"internal_error":                          "An internal error occurred.",
	"invalid_value":                           "An invalid value was provided.",
}

// Default codes for ErrorStatus without ErrorCode; other statuses get an
// empty body.
var defaultCodes = map[int]string{
	http.StatusBadRequest:          "invalid_value",
	http.StatusForbidden:           "access_denied|missing_permission",
	http.StatusNotFound:            "not_found|order",
	http.StatusTooManyRequests:     "request_limit_exceeded",
	http.StatusInternalServerError: "internal_error",
	http.StatusServiceUnavailable:  "service_unavailable",
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	rec := &Request{
		Time:   time.Now(),
		Method: r.Method,
		Path:   r.URL.EscapedPath(),
		Header: r.Header.Clone(),
	}
	if _, ok := rec.Header["X-Dc-Devkey"]; ok {
		rec.Header["X-Dc-Devkey"] = []string{Redacted}
	}
	body, readErr := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	rec.Body = body

	orderID, routed := route(r)
	if routed {
		rec.OrderID = orderID
	}

	s.mu.Lock()
	s.requests = append(s.requests, rec)
	var b Behavior
	k := 0
	if routed {
		s.counts[orderID]++
		b = s.behaviorLocked(orderID)
		k = s.pre[orderID]
		s.pre[orderID] = k + 1
	}
	s.mu.Unlock()
	if routed && k < b.Resets {
		resetConn(w)
		return
	}
	if routed && k < b.Resets+b.Hangs {
		b.Hang = true
	}

	answer := func(status int, items ...ErrorItem) {
		s.mu.Lock()
		rec.Status = status
		s.mu.Unlock()
		writeReply(w, status, items)
	}

	if routed && (b.Hang || b.Delay > 0) {
		var timer <-chan time.Time
		if !b.Hang {
			t := time.NewTimer(b.Delay)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-timer:
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		case <-s.closed:
			panic(http.ErrAbortHandler)
		}
	}

	if !routed {
		answer(http.StatusNotFound, item("not_found|route", ""))
		return
	}
	keys := r.Header.Values("X-DC-DEVKEY")
	if len(keys) != 1 || subtle.ConstantTimeCompare([]byte(keys[0]), []byte(s.apiKey)) != 1 || s.apiKey == "" {
		answer(http.StatusForbidden, item("access_denied|access_denied_invalid_key", ""))
		return
	}
	if mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" ||
		(params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
		answer(http.StatusBadRequest, ErrorItem{"bad_request_format", "Content-Type must be application/json."})
		return
	}
	if readErr != nil || len(body) > maxBody {
		answer(http.StatusBadRequest, ErrorItem{"bad_request_format", "The request body could not be read."})
		return
	}
	decoded, err := decode(body)
	if err != nil {
		answer(http.StatusBadRequest, ErrorItem{"bad_request_format", "The request was not properly formatted: " + err.Error()})
		return
	}
	s.mu.Lock()
	rec.Decoded = decoded
	s.mu.Unlock()
	if items := validate(decoded); len(items) > 0 {
		answer(http.StatusBadRequest, items...)
		return
	}

	if !isDigits(orderID) {
		// CertCentral order IDs are numeric; anything else names no order.
		answer(http.StatusNotFound, item("not_found|order", ""))
		return
	}

	s.mu.Lock()
	s.phase[orderID]++
	n := s.phase[orderID]
	s.mu.Unlock()
	switch {
	case n <= b.RateLimited:
		if b.RetryAfter > 0 {
			secs := int64((b.RetryAfter + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
		answer(http.StatusTooManyRequests, item("request_limit_exceeded", ""))
	case n <= b.RateLimited+b.TransientFailures:
		answer(http.StatusServiceUnavailable, item("service_unavailable", ""))
	case b.ErrorStatus != 0:
		code := b.ErrorCode
		if code == "" {
			code = defaultCodes[b.ErrorStatus]
		}
		if b.ErrorStatus >= 300 && b.ErrorStatus < 400 {
			w.Header().Set("Location", "https://redirect.invalid"+r.URL.EscapedPath())
		}
		if code == "" && b.ErrorMessage == "" {
			answer(b.ErrorStatus)
			return
		}
		it := item(code, b.ErrorMessage)
		answer(b.ErrorStatus, it)
	default:
		answer(http.StatusNoContent)
	}
}

func (s *Server) behaviorLocked(orderID string) Behavior {
	if b, ok := s.behaviors[orderID]; ok {
		return b
	}
	return s.def
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func item(code, msg string) ErrorItem {
	if msg == "" {
		msg = defaultMessages[code]
	}
	if msg == "" {
		msg = "The request failed."
	}
	return ErrorItem{Code: code, Message: msg}
}

// route matches PUT {BasePath}order/certificate/{order_id}/resend-emails
// and returns the unescaped order ID.
func route(r *http.Request) (string, bool) {
	if r.Method != http.MethodPut || r.URL.RawQuery != "" {
		return "", false
	}
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), BasePath+"order/certificate/")
	if !ok {
		return "", false
	}
	seg, ok := strings.CutSuffix(rest, "/resend-emails")
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return "", false
	}
	id, err := url.PathUnescape(seg)
	if err != nil {
		return "", false
	}
	return id, true
}

func decode(body []byte) (*ResendEmailsBody, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var v ResendEmailsBody
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the JSON object")
	}
	// JSON null or a non-object top-level value decodes without error into
	// a struct only for null; reject it like a malformed body.
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("the body must be a JSON object")
	}
	return &v, nil
}

func validate(b *ResendEmailsBody) []ErrorItem {
	var items []ErrorItem
	for i, ae := range b.DomainApprovalEmails {
		if ae.Domain == "" {
			items = append(items, ErrorItem{"required_param:domain_approval_emails.domain",
				fmt.Sprintf("domain_approval_emails[%d].domain is required.", i)})
		}
		if ae.Email == "" {
			items = append(items, ErrorItem{"required_param:domain_approval_emails.email",
				fmt.Sprintf("domain_approval_emails[%d].email is required.", i)})
		}
	}
	return items
}

func writeReply(w http.ResponseWriter, status int, items []ErrorItem) {
	if len(items) == 0 {
		w.WriteHeader(status)
		return
	}
	body, _ := json.Marshal(struct {
		Errors []ErrorItem `json:"errors"`
	}{items})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// resetConn drops the request's connection with a TCP reset (SO_LINGER 0),
// sending nothing.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
