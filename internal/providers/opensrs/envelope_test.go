package opensrs

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// golden compares got with testdata/name, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))
}

func TestEncodeRequestMatchesVector(t *testing.T) {
	t.Parallel()
	body, err := encodeRequest("resend_cert_email", "trust_service", assoc{{"order_id", "1799"}})
	require.NoError(t, err)
	require.Equal(t, vectorBody, string(body))
	require.Len(t, body, 428)
	require.Equal(t, "e653bd472a1ad4f56071da78f7bbc65a", Sign(body, vectorKey))
}

func TestEncodeRequestGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		action string
		attrs  assoc
	}{
		{"request_resend_cert_email", "resend_cert_email", assoc{{"order_id", "1799"}}},
		{"request_resend_approve_email", "resend_approve_email", assoc{{"order_id", "1799"}}},
		{"request_escaped", "resend_cert_email", assoc{{"order_id", `1</item><item key="x">&'"é<`}}},
		{"request_nested", "resend_cert_email", assoc{
			{"order_id", "7"},
			{"flag", true},
			{"count", 3},
			{"list", []string{"a", "b&c"}},
			{"mixed", []any{"x", map[string]any{"k<": "v>", "a": int64(1)}}},
			{"map", map[string]string{"z": "1", "y": "2"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body, err := encodeRequest(tc.action, "trust_service", tc.attrs)
			require.NoError(t, err)
			golden(t, tc.name+".golden", body)
			// Whatever we encode, we decode back as an OPS document.
			got, err := parseRequestForTest(body)
			require.NoError(t, err)
			require.Equal(t, tc.action, got["action"])
		})
	}
}

func TestEncodeRequestGoldenVector(t *testing.T) {
	t.Parallel()
	// The resend_cert_email golden is the signed test vector itself.
	want, err := os.ReadFile(filepath.Join("testdata", "request_resend_cert_email.golden"))
	require.NoError(t, err)
	require.Equal(t, vectorBody, string(want))
}

func TestEncodeRequestErrors(t *testing.T) {
	t.Parallel()
	_, err := encodeRequest("resend_cert_email", "trust_service", assoc{{"x", 1.5}})
	require.ErrorContains(t, err, "unsupported value type float64")

	var deep any = "leaf"
	for range maxEncodeDepth + 2 {
		deep = []any{deep}
	}
	_, err = encodeRequest("resend_cert_email", "trust_service", assoc{{"x", deep}})
	require.ErrorContains(t, err, "nested too deeply")
}

// parseRequestForTest decodes a request envelope with the reply decoder's
// container logic.
func parseRequestForTest(body []byte) (map[string]any, error) {
	// A request is a reply without is_success; add it to reuse decodeReply.
	s := strings.Replace(string(body), `<item key="protocol">`, `<item key="is_success">1</item><item key="protocol">`, 1)
	s = strings.Replace(s, `<item key="action">`, `<item key="request_action">`, 1)
	r, err := decodeReply([]byte(s))
	if err != nil {
		return nil, err
	}
	m := map[string]any{"attributes": r.Attributes}
	i := strings.Index(s, `<item key="request_action">`)
	rest := s[i+len(`<item key="request_action">`):]
	m["action"] = rest[:strings.Index(rest, "<")]
	return m, nil
}

func TestDecodeReply(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string
		want *Reply
	}{
		{"reply_success.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service", IsSuccess: true,
			ResponseCode: "200", ResponseText: "Command completed successfully.",
			Attributes: map[string]any{"order_id": "1799"}, OrderID: "1799"}},
		{"reply_auth_failure.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "401", ResponseText: "Authentication Error"}},
		{"reply_not_found.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "480", ResponseText: "Item not found"}},
		{"reply_rate_limit.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "300", ResponseText: "Max command rate exceeded"}},
		{"reply_ip_denied.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "400", ResponseText: "Access denied: invalid IP address"}},
		{"reply_error_details.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "465", ResponseText: "Invalid data",
			ErrorDetails: []string{"order is not completed", "order_id must be numeric"}}},
		{"reply_array_out_of_order.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service", IsSuccess: true,
			ResponseCode: "200", ResponseText: "Command completed successfully.",
			Attributes: map[string]any{
				"order_id": "1799",
				"domains":  []any{"a.example", "b.example", "c.example"},
				"contact":  map[string]any{"email": "ops@example.com"},
			}, OrderID: "1799"}},
		{"reply_lowercase.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service", IsSuccess: true,
			ResponseCode: "250", ResponseText: "Action submitted for asynchronous processing",
			Attributes: map[string]any{"ORDER_ID": "42"}, OrderID: "42"}},
		{"reply_mixed_preamble.xml", &Reply{Protocol: "xcp", Action: "reply", Object: "trust_service",
			ResponseCode: "480", ResponseText: "Item not found: order <1799> & friends"}},
	}
	for _, tc := range tests {
		t.Run(strings.TrimSuffix(tc.file, ".xml"), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(filepath.Join("testdata", tc.file))
			require.NoError(t, err)
			got, err := decodeReply(data)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestReplyMessage(t *testing.T) {
	t.Parallel()
	r := &Reply{ResponseText: "Invalid data", ErrorDetails: []string{"a", "", "b"}}
	require.Equal(t, "Invalid data; a; b", r.Message())
	require.Equal(t, "a", (&Reply{ErrorDetails: []string{"a"}}).Message())
}

func TestDecodeReplyRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
	}{
		{"Empty", ""},
		{"HTML", "<html><body>502 Bad Gateway</body></html>"},
		{"Text", "Service Unavailable"},
		{"Truncated", "<?xml version='1.0'?><OPS_envelope><body><data_block><dt_assoc><item key=\"is_success\">1"},
		{"NoIsSuccess", `<OPS_envelope><body><data_block><dt_assoc><item key="response_code">200</item></dt_assoc></data_block></body></OPS_envelope>`},
		{"NotAReply", `<OPS_envelope><body><data_block><dt_assoc><item key="action">resend_cert_email</item><item key="is_success">1</item></dt_assoc></data_block></body></OPS_envelope>`},
		{"ScalarBlock", `<OPS_envelope><body><data_block><dt_scalar>1</dt_scalar></data_block></body></OPS_envelope>`},
		{"ItemWithoutKey", `<OPS_envelope><body><data_block><dt_assoc><item>1</item></dt_assoc></data_block></body></OPS_envelope>`},
		{"NoDataBlock", `<OPS_envelope><header><version>0.9</version></header></OPS_envelope>`},
		{"TooDeep", `<OPS_envelope><body><data_block>` + strings.Repeat(`<dt_array><item key="0">`, 100) + `</data_block></body></OPS_envelope>`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeReply([]byte(tc.body))
			require.ErrorIs(t, err, errNotOPS)
		})
	}
}

func FuzzDecodeReply(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.xml"))
	require.NoError(f, err)
	require.NotEmpty(f, files)
	for _, p := range files {
		data, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(data)
	}
	f.Add([]byte(vectorBody))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeReply(data)
		if err != nil {
			require.Nil(t, r)
			return
		}
		_ = r.Message()
		_ = ClassifyCode(r.ResponseCode, r.ResponseText)
	})
}
