package digicert

import (
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testKey is distinctive so that leak checks cannot match by accident.
const testKey = "tk_LEAKCHECK_9f8e7d6c5b4a"

// basePath is deliberately not the root (go-github #752).
const basePath = "/api-prefix/services/v2/"

// setup serves handler under a non-root base path and returns a client
// pointed at it. Requests outside the base path fail the test.
func setup(t *testing.T, handler http.HandlerFunc, opts ...Option) (*Client, *httptest.Server) {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(basePath, handler)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request outside the base path: %s %s", r.Method, r.URL)
		http.Error(w, "outside base path", http.StatusTeapot)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL+basePath, opts...)
	return c, srv
}

func newClient(t *testing.T, baseURL string, opts ...Option) *Client {
	t.Helper()
	all := append([]Option{WithBaseURL(baseURL), WithAPIKey(testKey)}, opts...)
	c, err := New(all...)
	require.NoError(t, err)
	return c
}

func testMethod(t *testing.T, r *http.Request, want string) {
	t.Helper()
	require.Equal(t, want, r.Method)
}

func testHeader(t *testing.T, r *http.Request, header, want string) {
	t.Helper()
	require.Equal(t, []string{want}, r.Header.Values(header), "header %s", header)
}

// reply answers with status, an optional content type and a testdata file.
func reply(t *testing.T, status int, contentType, file string) http.HandlerFunc {
	t.Helper()
	var body []byte
	if file != "" {
		var err error
		body, err = os.ReadFile(filepath.Join("testdata", file))
		require.NoError(t, err)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}
}

// golden compares got with testdata/name.golden, rewriting it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create %s", path)
	require.Equal(t, string(want), string(got))
}

// asError returns err as *Error, failing the test otherwise.
func asError(t *testing.T, err error) *Error {
	t.Helper()
	require.Error(t, err)
	var e *Error
	require.ErrorAs(t, err, &e)
	return e
}

// quick is a timeout for calls expected to finish at once.
const quick = 5 * time.Second

// httpClientForTest is a caller-supplied client as a user would build it:
// it follows redirects by default.
var httpClientForTest = http.Client{}

// waitGone blocks a handler until the client went away, failing the test if
// that takes longer than quick. The handler must have read the body first,
// otherwise net/http does not watch the connection.
func waitGone(t *testing.T, r *http.Request) {
	t.Helper()
	select {
	case <-r.Context().Done():
	case <-time.After(quick):
		t.Error("client did not give up")
	}
}
