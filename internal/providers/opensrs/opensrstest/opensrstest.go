// Package opensrstest provides an in-process OpenSRS XCP simulator for tests,
// demos and benchmarks. It checks requests the way OpenSRS does (X-Username,
// X-Signature recomputed over the received bytes, the OPS envelope, the
// trust_service resend commands) and answers with OPS replies, or with the
// failures configured per order through Behavior.
//
// It shares no code with package opensrs on purpose: its signature check and
// XML handling are written independently so that a bug in the client is not
// mirrored by the simulator.
package opensrstest

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Behavior scripts how the simulator answers requests for one order. The
// counters apply in order to authenticated, well-formed requests for the
// order: first RateLimited rate-limit replies, then TransientFailures
// transient failures, then ErrorCode (if set) for every later request,
// otherwise success. Delay, Hang and IPNotAllowed apply to every request of
// the order, before authentication (as OpenSRS checks the caller's IP first).
type Behavior struct {
	// RateLimited: the first N requests get is_success=0, response_code 300
	// "Max command rate exceeded".
	RateLimited int
	// TransientFailures: the next N requests get HTTP 503 with an empty
	// body (no OPS reply).
	TransientFailures int
	// ErrorCode, if non-zero, makes every later request fail with this OPS
	// response_code (is_success=0) ...
	ErrorCode int
	// ... and this response_text (a default text for the code if empty).
	ErrorText string
	// Delay waits this long before answering (cut short when the client
	// gives up or the server closes).
	Delay time.Duration
	// Hang never answers until the client gives up or the server closes;
	// then the connection is dropped without a response (also for Delay).
	Hang bool
	// IPNotAllowed answers with a bare XML body and no HTTP status line, on
	// a hijacked connection, like OpenSRS to callers outside its allow list.
	IPNotAllowed bool
	// Resets: the first N requests of the order (counted apart from the
	// phases above, before anything else) are read whole, then their
	// connection is reset (RST) without an answer: a provider or a network
	// that drops the request after it arrived.
	Resets int
	// Hangs: the next N requests hang as with Hang; later ones go on.
	Hangs int
}

// Outcome is what the simulator answered to one request.
type Outcome struct {
	// StatusCode is the HTTP status; 0 when no status line was sent
	// (IPNotAllowed) or nothing was answered (Hang, client gone).
	StatusCode int
	// Success is the reply's is_success.
	Success bool
	// Code and Text are the OPS response_code and response_text; Code is 0
	// when no OPS reply was sent.
	Code int
	Text string
}

// Request is one request the simulator received.
type Request struct {
	Time      time.Time
	Method    string
	Action    string // as sent (not case-folded); empty if unparseable
	Object    string
	OrderID   string
	Username  string // X-Username
	Signature string // X-Signature
	Header    http.Header
	Body      []byte
	Outcome   Outcome // zero until answered
}

// Server is an OpenSRS simulator. It is safe for concurrent use.
type Server struct {
	srv      *httptest.Server
	username string
	apiKey   string
	closing  chan struct{}
	once     sync.Once

	mu        sync.Mutex
	behaviors map[string]Behavior
	def       Behavior
	seq       map[string]int // per order: authenticated, valid requests so far
	pre       map[string]int // per order: requests counted for Resets and Hangs
	requests  []Request
	load      Load      // requests in flight, measured by the server itself
	changed   time.Time // when the number in flight last changed
}

// Load is how many requests the server had in flight at once, measured
// from the arrival of each request to the end of its answer: what
// OpenSRS's simultaneous-connection cap sees.
type Load struct {
	// Now is the number in flight now; Max the most ever at once.
	Now, Max int
	// At[k] is the total time during which exactly k requests were in
	// flight, from the first request's arrival to the last change.
	At []time.Duration
}

// Span is the time from the first arrival to the last change.
func (l Load) Span() time.Duration {
	var d time.Duration
	for _, a := range l.At {
		d += a
	}
	return d
}

// AtLeast is the share of Span during which at least n requests were in
// flight (0 when nothing was measured).
func (l Load) AtLeast(n int) float64 {
	span := l.Span()
	if span == 0 {
		return 0
	}
	var d time.Duration
	for k := n; k < len(l.At); k++ {
		d += l.At[k]
	}
	return float64(d) / float64(span)
}

// NewServer starts a plain-HTTP simulator on 127.0.0.1 accepting username and
// apiKey.
func NewServer(username, apiKey string) *Server {
	s := newServer(username, apiKey)
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	return s
}

// NewTLSServer starts an HTTPS simulator; Client trusts its certificate.
func NewTLSServer(username, apiKey string) *Server {
	s := newServer(username, apiKey)
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.handle))
	return s
}

// NewServerOn serves plain HTTP on l, a listener the caller opened (the
// standalone simulator of cmd/simulators listens on a fixed loopback port);
// Close closes l.
func NewServerOn(l net.Listener, username, apiKey string) *Server {
	s := newServer(username, apiKey)
	s.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 10 * time.Second}}
	s.srv.Start()
	return s
}

func newServer(username, apiKey string) *Server {
	return &Server{
		username:  username,
		apiKey:    apiKey,
		closing:   make(chan struct{}),
		behaviors: map[string]Behavior{},
		seq:       map[string]int{},
		pre:       map[string]int{},
	}
}

// URL returns the base URL, ending in "/".
func (s *Server) URL() string { return s.srv.URL + "/" }

// Client returns an HTTP client for the server; for a TLS server it trusts
// the server's certificate.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// SetBehavior scripts the answers for orderID and restarts its counters.
func (s *Server) SetBehavior(orderID string, b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behaviors[orderID] = b
	delete(s.seq, orderID)
	delete(s.pre, orderID)
}

// SetDefault scripts the answers for orders without their own Behavior; the
// zero Behavior (the initial default) answers success.
func (s *Server) SetDefault(b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.def = b
}

// Requests returns a copy of every request received, in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		r.Header = r.Header.Clone()
		r.Body = bytes.Clone(r.Body)
		out[i] = r
	}
	return out
}

// Load returns the in-flight measurement so far.
func (s *Server) Load() Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.load
	l.At = append([]time.Duration(nil), l.At...)
	return l
}

// ResetLoad starts the in-flight measurement afresh (Max becomes the
// number in flight now).
func (s *Server) ResetLoad() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.load = Load{Now: s.load.Now, Max: s.load.Now}
	s.changed = time.Time{}
}

// track adds delta to the requests in flight, first crediting the time
// spent at the previous level. The caller holds s.mu.
func (s *Server) track(delta int) {
	now := time.Now()
	if !s.changed.IsZero() {
		for len(s.load.At) <= s.load.Now {
			s.load.At = append(s.load.At, 0)
		}
		s.load.At[s.load.Now] += now.Sub(s.changed)
	}
	s.changed = now
	s.load.Now += delta
	s.load.Max = max(s.load.Max, s.load.Now)
}

// Count returns how many requests named orderID, whatever they were answered.
func (s *Server) Count(orderID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if r.OrderID == orderID {
			n++
		}
	}
	return n
}

// Close releases hung and delayed requests and shuts the server down.
func (s *Server) Close() {
	s.once.Do(func() { close(s.closing) })
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// sign computes X-Signature independently of package opensrs.
func sign(body []byte, key string) string {
	h1 := md5.Sum(append(bytes.Clone(body), key...))
	h2 := md5.Sum([]byte(hex.EncodeToString(h1[:]) + key))
	return hex.EncodeToString(h2[:])
}

const maxBody = 1 << 20

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.track(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.track(-1)
		s.mu.Unlock()
	}()
	body, readErr := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	env, parseErr := parseEnvelope(body)
	rec := Request{
		Time:      time.Now(),
		Method:    r.Method,
		Username:  r.Header.Get("X-Username"),
		Signature: r.Header.Get("X-Signature"),
		Header:    r.Header.Clone(),
		Body:      body,
	}
	if parseErr == nil {
		rec.Action, rec.Object, rec.OrderID = env.action, env.object, env.orderID
	}
	s.mu.Lock()
	idx := len(s.requests)
	s.requests = append(s.requests, rec)
	b, ok := s.behaviors[rec.OrderID]
	if !ok || parseErr != nil {
		b = s.def
	}
	k := s.pre[rec.OrderID]
	s.pre[rec.OrderID] = k + 1
	s.mu.Unlock()
	if k < b.Resets {
		s.mu.Lock()
		s.requests[idx].Outcome = reset
		s.mu.Unlock()
		resetConn(w)
		return
	}
	if k < b.Resets+b.Hangs {
		b.Hang = true
	}
	out := s.answer(w, r, body, readErr, env, parseErr, b)
	s.mu.Lock()
	s.requests[idx].Outcome = out
	s.mu.Unlock()
	if out == abandoned || out == closedDelay || out == closedHang || out == hungGaveUp {
		// Drop the connection without any response, as a server that goes
		// away would; returning normally would send an empty 200.
		panic(http.ErrAbortHandler)
	}
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

// Outcomes of requests that were never answered.
var (
	reset       = Outcome{Text: "connection reset without an answer"}
	abandoned   = Outcome{Text: "client gave up before the answer"}
	closedDelay = Outcome{Text: "server closed during delay"}
	closedHang  = Outcome{Text: "hung until the server closed"}
	hungGaveUp  = Outcome{Text: "hung until the client gave up"}
)

func (s *Server) answer(w http.ResponseWriter, r *http.Request, body []byte, readErr error, env envelope, parseErr error, b Behavior) Outcome {
	if b.Delay > 0 {
		t := time.NewTimer(b.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return abandoned
		case <-s.closing:
			return closedDelay
		}
	}
	if b.Hang {
		select {
		case <-r.Context().Done():
			return hungGaveUp
		case <-s.closing:
			return closedHang
		}
	}
	if b.IPNotAllowed {
		return s.ipDenied(w)
	}
	switch {
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		return plain(w, http.StatusMethodNotAllowed, "method not allowed")
	case readErr != nil:
		return plain(w, http.StatusBadRequest, "reading body: "+readErr.Error())
	case len(body) > maxBody:
		return plain(w, http.StatusRequestEntityTooLarge, "request too large")
	}
	// Authentication comes first on the real service.
	if r.Header.Get("X-Username") != s.username || r.Header.Get("X-Signature") != sign(body, s.apiKey) {
		return reply(w, 401, "Authentication Error", "")
	}
	if mt := r.Header.Get("Content-Type"); mt != "text/xml" && !strings.HasPrefix(mt, "text/xml;") {
		return reply(w, 400, "Invalid Command: Content-Type must be text/xml, got "+strconv.Quote(mt), "")
	}
	if r.Header.Get("Content-Length") == "" || r.ContentLength != int64(len(body)) {
		return reply(w, 400, fmt.Sprintf("Invalid Command: Content-Length %q does not match the %d body bytes", r.Header.Get("Content-Length"), len(body)), "")
	}
	if parseErr != nil {
		return reply(w, 400, "Invalid Command: unparseable OPS envelope: "+parseErr.Error(), "")
	}
	if !strings.EqualFold(env.protocol, "XCP") {
		return reply(w, 400, "Invalid Command: protocol must be XCP", "")
	}
	if !strings.EqualFold(env.object, "trust_service") {
		return reply(w, 430, "Invalid Command: unknown object "+strconv.Quote(env.object), "")
	}
	switch strings.ToLower(env.action) {
	case "resend_cert_email", "resend_approve_email":
	default:
		return reply(w, 430, "Invalid Command: unknown action "+strconv.Quote(env.action), "")
	}
	if !env.hasOrderID || env.orderID == "" {
		return reply(w, 460, "Missing required field: order_id", "")
	}
	if !allDigits(env.orderID) {
		return reply(w, 465, "Invalid data: order_id must be numeric", "")
	}

	s.mu.Lock()
	n := s.seq[env.orderID]
	s.seq[env.orderID] = n + 1
	s.mu.Unlock()
	switch {
	case n < b.RateLimited:
		return reply(w, 300, "Max command rate exceeded", "")
	case n < b.RateLimited+b.TransientFailures:
		w.WriteHeader(http.StatusServiceUnavailable)
		return Outcome{StatusCode: http.StatusServiceUnavailable, Text: "transient failure (empty body)"}
	case b.ErrorCode != 0:
		text := b.ErrorText
		if text == "" {
			text = DefaultText(b.ErrorCode)
		}
		return reply(w, b.ErrorCode, text, "")
	}
	return reply(w, 200, "Command completed successfully.", env.orderID)
}

// DefaultText returns the simulator's response_text for an OPS code.
func DefaultText(code int) string {
	switch code {
	case 200:
		return "Command completed successfully."
	case 250:
		return "Action submitted for asynchronous processing"
	case 300:
		return "Max command rate exceeded"
	case 310:
		return "Max simultaneous connections exceeded"
	case 350:
		return "Maximum number of commands per connection exceeded"
	case 400:
		return "Internal server error. Please retry."
	case 401:
		return "Authentication Error"
	case 404:
		return "Internal server error"
	case 410:
		return "Reseller authentication error"
	case 415:
		return "Authentication failed"
	case 430:
		return "Invalid Command"
	case 435:
		return "Permission denied"
	case 437:
		return "Another request is pending on this object"
	case 440, 445, 447:
		return "Quota exceeded"
	case 460:
		return "Missing required field"
	case 465:
		return "Invalid data"
	case 480:
		return "Item not found"
	case 485:
		return "Item already exists"
	case 486:
		return "Item exists in a processing state"
	case 487:
		return "Item not transferable"
	case 705:
		return "Client timed out"
	}
	return "Command failed"
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func plain(w http.ResponseWriter, status int, text string) Outcome {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text+"\n")
	return Outcome{StatusCode: status, Text: text}
}

// reply writes an OPS reply in the layout of the OpenSRS documentation, with
// HTTP 200 (OpenSRS reports errors inside the reply).
func reply(w http.ResponseWriter, code int, text, orderID string) Outcome {
	success := code == 200 || code == 250
	body := replyBody(success, code, text, orderID)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return Outcome{StatusCode: http.StatusOK, Success: success, Code: code, Text: text}
}

func replyBody(success bool, code int, text, orderID string) []byte {
	var b bytes.Buffer
	esc := func(s string) string {
		var e bytes.Buffer
		_ = xml.EscapeText(&e, []byte(s))
		return e.String()
	}
	isSuccess := "0"
	if success {
		isSuccess = "1"
	}
	b.WriteString("<?xml version='1.0' encoding='UTF-8' standalone='no'?>\n")
	b.WriteString("<!DOCTYPE OPS_envelope SYSTEM 'ops.dtd'>\n")
	b.WriteString("<OPS_envelope>\n    <header>\n        <version>0.9</version>\n    </header>\n")
	b.WriteString("    <body>\n        <data_block>\n            <dt_assoc>\n")
	item := func(k, v string) {
		fmt.Fprintf(&b, "                <item key=\"%s\">%s</item>\n", k, esc(v))
	}
	item("protocol", "XCP")
	item("action", "REPLY")
	item("object", "TRUST_SERVICE")
	item("is_success", isSuccess)
	item("response_text", text)
	item("response_code", strconv.Itoa(code))
	if orderID != "" {
		b.WriteString("                <item key=\"attributes\">\n                    <dt_assoc>\n")
		fmt.Fprintf(&b, "                        <item key=\"order_id\">%s</item>\n", esc(orderID))
		b.WriteString("                    </dt_assoc>\n                </item>\n")
	}
	b.WriteString("            </dt_assoc>\n        </data_block>\n    </body>\n</OPS_envelope>")
	return b.Bytes()
}

var ipDeniedBody = replyBody(false, 400, "Access denied: invalid IP address", "")

// IPDeniedBody returns the bare XML the simulator writes, without any HTTP
// status line, to callers configured with IPNotAllowed.
func IPDeniedBody() []byte { return bytes.Clone(ipDeniedBody) }

func (s *Server) ipDenied(w http.ResponseWriter) Outcome {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return plain(w, http.StatusInternalServerError, "cannot hijack connection")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return plain(w, http.StatusInternalServerError, "hijack: "+err.Error())
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = buf.Write(ipDeniedBody)
	_ = buf.Flush()
	return Outcome{Code: 400, Text: "Access denied: invalid IP address (bare XML, no status line)"}
}

// envelope is what the simulator reads from a request.
type envelope struct {
	protocol, action, object string
	orderID                  string
	hasOrderID               bool
}

// node is a generic XML element.
type node struct {
	name     string
	key      string
	hasKey   bool
	text     string
	children []*node
}

func parseXML(data []byte) (*node, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	var stack []*node
	var root *node
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(stack) > 64 {
				return nil, errors.New("nested too deeply")
			}
			n := &node{name: t.Name.Local}
			for _, a := range t.Attr {
				if a.Name.Local == "key" {
					n.key, n.hasKey = a.Value, true
				}
			}
			if len(stack) == 0 {
				if root != nil {
					return nil, errors.New("several root elements")
				}
				root = n
			} else {
				p := stack[len(stack)-1]
				p.children = append(p.children, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].text += string(t)
			}
		}
	}
	if root == nil {
		return nil, errors.New("no root element")
	}
	return root, nil
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (n *node) item(key string) *node {
	for _, c := range n.children {
		if c.name == "item" && c.key == key {
			return c
		}
	}
	return nil
}

func parseEnvelope(body []byte) (envelope, error) {
	var env envelope
	root, err := parseXML(body)
	if err != nil {
		return env, err
	}
	if root.name != "OPS_envelope" {
		return env, fmt.Errorf("root element is <%s>", root.name)
	}
	if h := root.child("header"); h == nil || h.child("version") == nil {
		return env, errors.New("no header/version")
	}
	bd := root.child("body")
	if bd == nil {
		return env, errors.New("no body")
	}
	db := bd.child("data_block")
	if db == nil {
		return env, errors.New("no data_block")
	}
	top := db.child("dt_assoc")
	if top == nil {
		return env, errors.New("data_block holds no dt_assoc")
	}
	scalar := func(n *node, key string) string {
		if it := n.item(key); it != nil && len(it.children) == 0 {
			return it.text
		}
		return ""
	}
	env.protocol = scalar(top, "protocol")
	env.action = scalar(top, "action")
	env.object = scalar(top, "object")
	if attrs := top.item("attributes"); attrs != nil {
		if a := attrs.child("dt_assoc"); a != nil {
			if it := a.item("order_id"); it != nil && len(it.children) == 0 {
				env.orderID, env.hasOrderID = it.text, true
			}
		}
	}
	return env, nil
}
