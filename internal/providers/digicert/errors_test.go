package digicert

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
)

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		file   string
		body   string
		want   []ErrorItem
		wantOK bool
	}{
		{name: "NotFound", file: "not_found.json", wantOK: true,
			want: []ErrorItem{{"not_found|order", "The specified order was not found."}}},
		{name: "TwoErrors", file: "two_errors.json", wantOK: true, want: []ErrorItem{
			{"required_param:certificate.server_platform", "Server platform is required."},
			{"required_param:certificate.signature_hash", "Signature hash is required."},
		}},
		{name: "RateLimited", file: "rate_limited.json", wantOK: true,
			want: []ErrorItem{{"request_limit_exceeded", "Service unavailable, please limit request volume"}}},
		{name: "Forbidden", file: "forbidden.json", wantOK: true,
			want: []ErrorItem{{"access_denied|access_denied_invalid_key", "Invalid API key."}}},
		{name: "Route", file: "route_not_found.json", wantOK: true,
			want: []ErrorItem{{"not_found|route", "The requested route was not found."}}},
		{name: "HTML", file: "not_json.html"},
		{name: "Empty", body: ""},
		{name: "LeadingSpaceAndBOM", body: "\ufeff \n{\"errors\":[{\"code\":\"x\",\"message\":\"y\"}]}", wantOK: true, want: []ErrorItem{{"x", "y"}}},
		{name: "EmptyArray", body: `{"errors":[]}`},
		{name: "NoErrorsKey", body: `{"error":"x"}`},
		{name: "Truncated", body: `{"errors":[{"code":"x"`},
		{name: "NonStringFields", body: `{"errors":[{"code":1,"message":"m"},{"code":"c","message":null}]}`, wantOK: true,
			want: []ErrorItem{{"", "m"}, {"c", ""}}},
		{name: "NonObjectEntries", body: `{"errors":["x",{"code":"c","message":"m"}]}`, wantOK: true, want: []ErrorItem{{"c", "m"}}},
		{name: "ExtraFields", body: `{"errors":[{"code":"c","message":"m","field":"f"}],"extra":1}`, wantOK: true, want: []ErrorItem{{"c", "m"}}},
		{name: "Array", body: `[{"code":"c"}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := []byte(tc.body)
			if tc.file != "" {
				var err error
				body, err = os.ReadFile(filepath.Join("testdata", tc.file))
				require.NoError(t, err)
			}
			got, ok := decodeErrors(body)
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		codes  []string
		want   providers.Class
	}{
		{"NoContent", 204, nil, providers.Success},
		{"Moved", 301, nil, providers.Configuration},
		{"BadRequest", 400, []string{"bad_request_format"}, providers.Permanent},
		{"Unauthorized", 401, nil, providers.Configuration},
		{"Forbidden", 403, []string{"access_denied|missing_permission"}, providers.Configuration},
		{"NotFoundOrder", 404, []string{"not_found|order"}, providers.Permanent},
		{"NotFoundRoute", 404, []string{"not_found|route"}, providers.Configuration},
		{"NotFoundBare", 404, []string{"not_found"}, providers.Configuration},
		{"NotFoundNoBody", 404, nil, providers.Configuration},
		{"RequestTimeout", 408, nil, providers.Transient},
		{"Conflict", 409, nil, providers.Permanent},
		{"TooMany", 429, []string{"request_limit_exceeded"}, providers.RateLimited},
		{"Internal", 500, nil, providers.Transient},
		{"GatewayTimeout", 504, nil, providers.Transient},
		{"Weird", 600, nil, providers.Transient},
		{"Informational", 102, nil, providers.Transient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var items []ErrorItem
			for _, c := range tc.codes {
				items = append(items, ErrorItem{Code: c})
			}
			require.Equal(t, tc.want, classify(tc.status, items))
		})
	}
}

func TestErrorText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		err        *Error
		want       string
		wantDetail providers.Detail
	}{
		{
			name: "OneError",
			err:  &Error{StatusCode: 404, Class: providers.Permanent, Errors: []ErrorItem{{"not_found|order", "Order not found"}}},
			want: "digicert: 404 not_found|order: Order not found (permanent)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.Permanent, StatusCode: 404,
				Code: "not_found|order", Message: "Order not found"},
		},
		{
			name: "SeveralErrors",
			err: &Error{StatusCode: 400, Class: providers.Permanent, Errors: []ErrorItem{
				{"required_param:a", "A is required."}, {"invalid_value:b", ""}, {"", "Only prose."}}},
			want: "digicert: 400 required_param:a: A is required.; invalid_value:b; Only prose. (permanent)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.Permanent, StatusCode: 400,
				Code: "required_param:a; invalid_value:b; ", Message: "A is required.; ; Only prose."},
		},
		{
			name: "NoBody",
			err:  &Error{StatusCode: 503, Class: providers.Transient},
			want: "digicert: HTTP 503 (transient)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.Transient, StatusCode: 503,
				Message: "Service Unavailable"},
		},
		{
			name: "RateLimited",
			err: &Error{StatusCode: 429, Class: providers.RateLimited, RetryAfter: 5 * time.Second,
				Errors: []ErrorItem{{"request_limit_exceeded", "Slow down"}}},
			want: "digicert: 429 request_limit_exceeded: Slow down (rate_limited)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.RateLimited, StatusCode: 429,
				Code: "request_limit_exceeded", Message: "Slow down", RetryAfter: 5 * time.Second},
		},
		{
			name: "NotSent",
			err:  &Error{Class: providers.Transient, NotSent: true, Err: errors.New("dial tcp 127.0.0.1:1: connect: connection refused")},
			want: "digicert: request not sent: dial tcp 127.0.0.1:1: connect: connection refused (transient)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.Transient, NotSent: true,
				Message: "dial tcp 127.0.0.1:1: connect: connection refused"},
		},
		{
			name: "MaybeSent",
			err:  &Error{Class: providers.Transient, Err: errors.New("read: connection reset by peer")},
			want: "digicert: request failed: read: connection reset by peer (transient)",
			wantDetail: providers.Detail{Provider: providers.DigiCert, Class: providers.Transient,
				Message: "read: connection reset by peer"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, tc.err.Error())
			require.Equal(t, tc.wantDetail, tc.err.Detail())
			require.Equal(t, tc.wantDetail, providers.Describe(tc.err))
		})
	}
}

func FuzzDecodeErrors(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*"))
	require.NoError(f, err)
	for _, file := range files {
		if strings.HasSuffix(file, ".golden") {
			continue
		}
		b, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte(`{"errors":[{"code":"a|b:c","message":"m"},null,1,"s",[],{}]}`))
	f.Add([]byte(`{"errors":null}`))
	f.Add([]byte("\ufeff{"))
	f.Fuzz(func(t *testing.T, body []byte) {
		items, ok := decodeErrors(body)
		if ok {
			require.NotEmpty(t, items)
		} else {
			require.Nil(t, items)
		}
		for _, status := range []int{400, 404, 429, 503} {
			e := &Error{StatusCode: status, Errors: items, Body: body, Class: classify(status, items)}
			msg := e.Error()
			require.True(t, strings.HasPrefix(msg, "digicert: "))
			d := e.Detail()
			require.Equal(t, status, d.StatusCode)
			codes := make([]string, 0, len(items))
			for _, it := range items {
				codes = append(codes, it.Code)
			}
			require.Equal(t, strings.Join(codes, "; "), d.Code)
		}
	})
}
