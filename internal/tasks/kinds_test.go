package tasks

import (
	"encoding/json"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
)

// samples holds one valid payload of every kind, with every field set, built
// the way callers build them. TestKindsRoundTrip fails for a kind without one.
var samples = map[string]Payload{
	TypeOpenSRSResendCertEmail:    NewOpenSRSPayload("1799", "T-1", false),
	TypeOpenSRSResendApproveEmail: NewOpenSRSPayload("1799", "T-1", true),
	TypeDigiCertResendEmails: &DigiCertPayload{OrderID: "12345", Locale: "pt_BR", Reference: "r",
		DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
}

// TestKindsRoundTrip walks the table: each kind's payload survives
// JSON → Decode unchanged, names its own type and provider, and its queue is
// one of Queues.
func TestKindsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, k := range Kinds() {
		t.Run(k.Type, func(t *testing.T) {
			t.Parallel()
			p, ok := samples[k.Type]
			require.True(t, ok, "no sample payload for %s", k.Type)
			require.NoError(t, p.Validate())
			require.Equal(t, k.Type, p.Type())
			require.Equal(t, k.Provider, p.Provider())
			require.IsType(t, k.New(), p, "the constructor builds the kind's own struct")
			require.Contains(t, Queues, k.Queue())
			require.True(t, Known(k.Type))

			b, err := json.Marshal(p)
			require.NoError(t, err)
			back, err := Decode(k.Type, b)
			require.NoError(t, err)
			require.Equal(t, p, back)
			require.Equal(t, k.Type, back.Type())
			require.Equal(t, p.Request(), back.Request())
		})
	}
}

// TestKindsZeroValueNamesItsType: a payload struct's zero value, made
// without any constructor, reports its own kind's type, and no two kinds
// share a Go type, so the task type cannot hide in an unexported field
// (the old OpenSRSPayload became the cert-email type when built as a literal).
func TestKindsZeroValueNamesItsType(t *testing.T) {
	t.Parallel()
	seen := map[reflect.Type]string{}
	for _, k := range Kinds() {
		t.Run(k.Type, func(t *testing.T) {
			typ := reflect.TypeOf(k.New())
			require.Equal(t, reflect.Pointer, typ.Kind())
			zero := reflect.New(typ.Elem()).Interface().(Payload)
			require.Equal(t, k.Type, zero.Type())
			require.Equal(t, k.Provider, zero.Provider())
			require.Empty(t, seen[typ], "%s shares its Go type with %s", k.Type, seen[typ])
			seen[typ] = k.Type
		})
	}
	// The literals callers write, listed by hand so that a table entry
	// whose New set some hidden state could not mask it.
	for want, p := range map[string]Payload{
		TypeOpenSRSResendCertEmail:    &OpenSRSCertEmail{},
		TypeOpenSRSResendApproveEmail: &OpenSRSApproveEmail{},
		TypeDigiCertResendEmails:      &DigiCertPayload{},
	} {
		require.Equal(t, want, p.Type())
	}
}

// TestKindsTable checks the table's own invariants and the wire names it
// must keep.
func TestKindsTable(t *testing.T) {
	t.Parallel()
	var types []string
	for _, k := range Kinds() {
		require.NotContains(t, types, k.Type, "duplicate type")
		types = append(types, k.Type)
		require.True(t, strings.HasPrefix(k.Type, string(k.Provider)+":"), "%s is named after its provider", k.Type)
		require.NotEmpty(t, k.Description)
	}
	require.Equal(t, []string{"opensrs:resend_cert_email", "opensrs:resend_approve_email", "digicert:resend_emails"}, types)
	require.Equal(t, []string{"opensrs", "digicert"}, Queues)
	require.Equal(t, []string{QueueOpenSRS, QueueDigiCert}, Queues)
	require.Equal(t, []providers.Name{providers.OpenSRS, providers.DigiCert}, Providers())

	var cmds []string
	for _, c := range Commands() {
		cmds = append(cmds, c.Command)
		got, ok := CommandNamed(c.Command)
		require.True(t, ok)
		require.Same(t, c, got)
	}
	require.Equal(t, []string{"opensrs", "digicert"}, cmds)
	_, ok := CommandNamed("batch")
	require.False(t, ok)
}

// TestCommandFlags: each command's flags build the payload the CLI
// promises, of the right type.
func TestCommandFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		command string
		args    []string
		want    Payload
	}{
		{"opensrs", []string{"--order-id", "1", "--reference", "r"}, NewOpenSRSPayload("1", "r", false)},
		{"opensrs", []string{"--order-id", "1", "--approve"}, NewOpenSRSPayload("1", "", true)},
		{"digicert", []string{"--order-id", "2", "--approval-email", "example.com=a@example.com", "--approval-email", "b.example.com=b@example.com", "--locale", "en", "--reference", "r"},
			&DigiCertPayload{OrderID: "2", Locale: "en", Reference: "r", DomainApprovalEmails: []providers.ApprovalEmail{
				{Domain: "example.com", Email: "a@example.com"}, {Domain: "b.example.com", Email: "b@example.com"}}}},
		{"digicert", []string{"--order-id", "2"}, &DigiCertPayload{OrderID: "2"}},
	}
	for _, tc := range tests {
		t.Run(tc.command+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			c, ok := CommandNamed(tc.command)
			require.True(t, ok)
			fs := flag.NewFlagSet(tc.command, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			build := c.Flags(fs)
			require.NoError(t, fs.Parse(tc.args))
			require.Equal(t, tc.want, build())
		})
	}
	c, _ := CommandNamed("digicert")
	fs := flag.NewFlagSet("digicert", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.Flags(fs)
	require.ErrorContains(t, fs.Parse([]string{"--approval-email", "example.com"}), "must be DOMAIN=EMAIL")
}

func TestQueuesFor(t *testing.T) {
	t.Parallel()
	var r providers.Resender = nil
	fake := struct{ providers.Resender }{r}
	tests := []struct {
		name      string
		resenders map[providers.Name]providers.Resender
		want      map[string]int
	}{
		{"none", nil, map[string]int{}},
		{"opensrs", map[providers.Name]providers.Resender{providers.OpenSRS: fake}, map[string]int{"opensrs": 1}},
		{"both", map[providers.Name]providers.Resender{providers.OpenSRS: fake, providers.DigiCert: fake}, map[string]int{"opensrs": 1, "digicert": 1}},
		{"unknown provider ignored", map[providers.Name]providers.Resender{"sectigo": fake}, map[string]int{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, QueuesFor(tc.resenders))
		})
	}
}

func TestCheckProvider(t *testing.T) {
	t.Parallel()
	require.NoError(t, CheckProvider("opensrs"))
	require.NoError(t, CheckProvider("digicert"))
	require.EqualError(t, CheckProvider(""), "provider: is required (opensrs or digicert)")
	require.EqualError(t, CheckProvider("sectigo"), `provider: must be opensrs or digicert, got "sectigo"`)
	require.EqualError(t, CheckProvider("OpenSRS"), `provider: must be opensrs or digicert, got "OpenSRS"`)
}

func TestDecodeLine(t *testing.T) {
	t.Parallel()
	dc := func(p DigiCertPayload) Payload { return &p }
	tests := []struct {
		name    string
		line    string
		want    Payload
		wantErr string // substring
	}{
		{"opensrs default type", `{"provider":"opensrs","order_id":"1","reference":"r"}`, NewOpenSRSPayload("1", "r", false), ""},
		{"opensrs cert type", `{"provider":"opensrs","type":"opensrs:resend_cert_email","order_id":"1"}`, NewOpenSRSPayload("1", "", false), ""},
		{"opensrs approve type", `{"provider":"opensrs","type":"opensrs:resend_approve_email","order_id":"1"}`, NewOpenSRSPayload("1", "", true), ""},
		{"digicert", `{"provider":"digicert","order_id":"2","locale":"en","domain_approval_emails":[{"domain":"example.com","email":"a@example.com"}]}`,
			dc(DigiCertPayload{OrderID: "2", Locale: "en", DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "a@example.com"}}}), ""},
		{"field names ignore case as before", `{"Provider":"opensrs","ORDER_ID":"1"}`, NewOpenSRSPayload("1", "", false), ""},
		{"empty foreign fields dropped as before", `{"provider":"opensrs","order_id":"1","locale":"","domain_approval_emails":[]}`, NewOpenSRSPayload("1", "", false), ""},
		{"null foreign field dropped", `{"provider":"opensrs","order_id":"1","locale":null}`, NewOpenSRSPayload("1", "", false), ""},
		{"foreign field", `{"provider":"opensrs","order_id":"1","locale":"en"}`, nil, "locale: only for provider digicert"},
		{"unknown field", `{"provider":"opensrs","order_id":"1","x":1}`, nil, `invalid JSON: json: unknown field "x"`},
		{"unknown nested field", `{"provider":"digicert","order_id":"1","domain_approval_emails":[{"domain":"example.com","email":"a@example.com","x":1}]}`, nil, `unknown field "x"`},
		{"missing provider", `{"order_id":"1"}`, nil, "provider: is required (opensrs or digicert)"},
		{"bad provider", `{"provider":"sectigo","order_id":"1"}`, nil, `provider: must be opensrs or digicert, got "sectigo"`},
		{"provider not a string", `{"provider":1,"order_id":"1"}`, nil, "invalid JSON"},
		{"type of another provider", `{"provider":"digicert","order_id":"1","type":"opensrs:resend_cert_email"}`, nil, `type: "opensrs:resend_cert_email" is not a digicert task type`},
		{"unknown type", `{"provider":"opensrs","order_id":"1","type":"opensrs:frob"}`, nil, `type: "opensrs:frob" is not an opensrs task type (want opensrs:resend_cert_email or opensrs:resend_approve_email)`},
		{"order id number", `{"provider":"opensrs","order_id":1799}`, nil, "invalid JSON"},
		{"two values", `{"provider":"opensrs","order_id":"1"} {}`, nil, "more than one value"},
		{"array", `[1]`, nil, "invalid JSON"},
		{"blank", "  \r\n", nil, "empty line"},
		{"invalid payload", `{"provider":"opensrs","order_id":"x"}`, nil, "order_id: must be 1-20"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := DecodeLine([]byte(tc.line))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.Nil(t, p)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, p)
		})
	}
}

func TestOrList(t *testing.T) {
	t.Parallel()
	for want, in := range map[string][]string{"": nil, "a": {"a"}, "a or b": {"a", "b"}, "a, b or c": {"a", "b", "c"}} {
		require.Equal(t, want, OrList(in))
	}
}
