// Package apitest checks HTTP exchanges with the API against its contract,
// api/openapi.yaml, with kin-openapi's openapi3filter: every test of the
// API (handler tests and the end-to-end test with curl) passes each
// request and response it makes through Check.
package apitest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	apispec "github.com/certmail/certmail/api"
)

var (
	once   sync.Once
	router routers.Router
	doc    *openapi3.T
	errDoc error
)

func load() {
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", openapi3filter.PlainBodyDecoder)
	doc, errDoc = openapi3.NewLoader().LoadFromData(apispec.OpenAPI)
	if errDoc != nil {
		return
	}
	if errDoc = doc.Validate(context.Background()); errDoc != nil {
		return
	}
	// Match any host: the tests serve on their own ports.
	doc.Servers = openapi3.Servers{{URL: "/"}}
	router, errDoc = gorillamux.NewRouter(doc)
}

// Doc returns the loaded, validated contract.
func Doc(t testing.TB) *openapi3.T {
	t.Helper()
	once.Do(load)
	if errDoc != nil {
		t.Fatalf("api/openapi.yaml: %v", errDoc)
	}
	return doc
}

// Exchange is one request and its response.
type Exchange struct {
	Method, URL string
	Header      http.Header // request headers
	Body        []byte      // request body
	Status      int
	RespHeader  http.Header
	RespBody    []byte
}

// Check validates the response of ex against the contract, always, and its
// request: a request the test means to be valid must validate; one it
// means to be invalid (requestValid false) must be rejected by the
// contract too, so that the contract and the server agree on what is
// invalid. Requests the contract cannot judge (a token, a body over its
// size limit, an item of a batch) are passed as valid.
func Check(t testing.TB, ex Exchange, requestValid bool) {
	t.Helper()
	Doc(t)
	u, err := url.Parse(ex.URL)
	if err != nil {
		t.Fatalf("apitest: %v", err)
	}
	req, err := http.NewRequest(ex.Method, u.String(), bytes.NewReader(ex.Body))
	if err != nil {
		t.Fatalf("apitest: %v", err)
	}
	req.Header = ex.Header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		if ex.Status == http.StatusNotFound || ex.Status == http.StatusMethodNotAllowed {
			return // not a route of the contract, as the server said
		}
		t.Fatalf("%s %s: not in api/openapi.yaml: %v", ex.Method, u.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	rerr := openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case requestValid && rerr != nil:
		t.Errorf("%s %s: request does not match api/openapi.yaml: %s", ex.Method, u.Path, short(rerr.Error()))
	case !requestValid && rerr == nil:
		t.Errorf("%s %s: request meant invalid passes api/openapi.yaml: %s", ex.Method, u.Path, short(string(ex.Body)))
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: ex.Status, Header: ex.RespHeader,
		Body:    io.NopCloser(bytes.NewReader(ex.RespBody)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s: response %d does not match api/openapi.yaml: %s\nbody: %s", ex.Method, u.Path, ex.Status, short(err.Error()), short(string(ex.RespBody)))
	}
}

// short keeps failure messages readable whatever the body's size.
func short(s string) string {
	const max = 2000
	if len(s) <= max {
		return s
	}
	return s[:max] + "… (" + strconv.Itoa(len(s)) + " bytes)"
}
