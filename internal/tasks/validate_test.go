package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers"
	"github.com/certmail/certmail/internal/redistest"
)

// requireFieldErr asserts that err is a *FieldError naming field.
func requireFieldErr(t *testing.T, err error, field string) {
	t.Helper()
	require.Error(t, err)
	var fe *FieldError
	require.True(t, errors.As(err, &fe), "want *FieldError, got %T: %v", err, err)
	require.Equal(t, field, fe.Field)
	require.True(t, strings.HasPrefix(err.Error(), field+": "), "message %q does not start with the field", err.Error())
}

func TestOpenSRSPayloadValidate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		orderID   string
		reference string
		wantField string // "" means valid
	}{
		{name: "valid", orderID: "1234567", reference: "TICKET-1"},
		{name: "valid without reference", orderID: "1"},
		{name: "valid 20 digits", orderID: "12345678901234567890"},
		{name: "empty order", orderID: "", wantField: "order_id"},
		{name: "letters", orderID: "12a4", wantField: "order_id"},
		{name: "21 digits", orderID: "123456789012345678901", wantField: "order_id"},
		{name: "arabic-indic digits", orderID: "١٢٣", wantField: "order_id"},
		{name: "fullwidth digits", orderID: "１２３", wantField: "order_id"},
		{name: "leading space", orderID: " 123", wantField: "order_id"},
		{name: "trailing space", orderID: "123 ", wantField: "order_id"},
		{name: "trailing newline", orderID: "123\n", wantField: "order_id"},
		{name: "negative", orderID: "-123", wantField: "order_id"},
		{name: "reference 128 ascii", orderID: "1", reference: strings.Repeat("r", 128)},
		{name: "reference 129 chars", orderID: "1", reference: strings.Repeat("r", 129), wantField: "reference"},
		{name: "reference 128 multi-byte", orderID: "1", reference: strings.Repeat("é", 64) + strings.Repeat("日", 64)},
		{name: "reference 129 multi-byte", orderID: "1", reference: strings.Repeat("日", 129), wantField: "reference"},
		{name: "reference control char", orderID: "1", reference: "line\x07bell", wantField: "reference"},
		{name: "reference newline", orderID: "1", reference: "a\nb", wantField: "reference"},
		{name: "reference tab", orderID: "1", reference: "a\tb", wantField: "reference"},
		{name: "reference invalid utf-8", orderID: "1", reference: "a\xffb", wantField: "reference"},
		{name: "reference with spaces ok", orderID: "1", reference: "ticket 42 / ops"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, approve := range []bool{false, true} {
				err := NewOpenSRSPayload(tc.orderID, tc.reference, approve).Validate()
				if tc.wantField == "" {
					require.NoError(t, err)
					continue
				}
				requireFieldErr(t, err, tc.wantField)
			}
		})
	}
}

func TestDigiCertPayloadValidate(t *testing.T) {
	t.Parallel()

	label63 := strings.Repeat("a", 63)
	label64 := strings.Repeat("a", 64)
	// 4 labels of 63 + ".com" = 4*64+3 = 259 > 253
	tooLong := strings.Repeat(label63+".", 4) + "com"
	// 3 labels of 63 + 61 chars + ".com"... build exactly 253
	exactly253 := strings.Repeat(label63+".", 3) + strings.Repeat("b", 57) + ".com"
	require.Len(t, exactly253, 253)

	ae := func(domain, email string) []providers.ApprovalEmail {
		return []providers.ApprovalEmail{{Domain: domain, Email: email}}
	}
	tests := []struct {
		name      string
		p         DigiCertPayload
		wantField string
	}{
		{name: "minimal", p: DigiCertPayload{OrderID: "42"}},
		{name: "full", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin@example.com"), Locale: "en", Reference: "r"}},
		{name: "empty order", p: DigiCertPayload{}, wantField: "order_id"},
		{name: "order letters", p: DigiCertPayload{OrderID: "x1"}, wantField: "order_id"},

		// emails
		{name: "email display-name form", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "A <a@b.com>")}, wantField: "domain_approval_emails[0].email"},
		{name: "email angle brackets", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "<a@b.com>")}, wantField: "domain_approval_emails[0].email"},
		{name: "email no domain", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin@")}, wantField: "domain_approval_emails[0].email"},
		{name: "email no at", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin")}, wantField: "domain_approval_emails[0].email"},
		{name: "email single-label domain", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin@localhost")}, wantField: "domain_approval_emails[0].email"},
		{name: "email bad domain", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin@exa_mple.com")}, wantField: "domain_approval_emails[0].email"},
		{name: "email trailing space", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "admin@example.com ")}, wantField: "domain_approval_emails[0].email"},
		{name: "email empty", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com", "")}, wantField: "domain_approval_emails[0].email"},

		// domains
		{name: "domain single label", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("localhost", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain underscore", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("my_host.example.com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain leading hyphen", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("-host.example.com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain trailing hyphen", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("host-.example.com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain 63-char label ok", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae(label63+".example.com", "a@example.com")}},
		{name: "domain 64-char label", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae(label64+".example.com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain 253 chars ok", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae(exactly253, "a@example.com")}},
		{name: "domain too long", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae(tooLong, "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain empty label", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example..com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain trailing dot", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("example.com.", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain wildcard", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("*.example.com", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "domain empty", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: ae("", "a@example.com")}, wantField: "domain_approval_emails[0].domain"},
		{name: "second entry bad", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: []providers.ApprovalEmail{
			{Domain: "example.com", Email: "a@example.com"}, {Domain: "bad_domain.com", Email: "a@example.com"},
		}}, wantField: "domain_approval_emails[1].domain"},

		// duplicates
		{name: "duplicate pair", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: []providers.ApprovalEmail{
			{Domain: "example.com", Email: "a@example.com"}, {Domain: "www.example.com", Email: "a@example.com"}, {Domain: "example.com", Email: "a@example.com"},
		}}, wantField: "domain_approval_emails[2]"},
		{name: "same domain other email ok", p: DigiCertPayload{OrderID: "42", DomainApprovalEmails: []providers.ApprovalEmail{
			{Domain: "example.com", Email: "a@example.com"}, {Domain: "example.com", Email: "b@example.com"},
		}}},

		// locale
		{name: "locale en", p: DigiCertPayload{OrderID: "42", Locale: "en"}},
		{name: "locale pt_BR", p: DigiCertPayload{OrderID: "42", Locale: "pt_BR"}},
		{name: "locale EN", p: DigiCertPayload{OrderID: "42", Locale: "EN"}, wantField: "locale"},
		{name: "locale en-US", p: DigiCertPayload{OrderID: "42", Locale: "en-US"}, wantField: "locale"},
		{name: "locale english", p: DigiCertPayload{OrderID: "42", Locale: "english"}, wantField: "locale"},
		{name: "locale pt_br", p: DigiCertPayload{OrderID: "42", Locale: "pt_br"}, wantField: "locale"},

		// reference
		{name: "reference 129", p: DigiCertPayload{OrderID: "42", Reference: strings.Repeat("x", 129)}, wantField: "reference"},
		{name: "reference control", p: DigiCertPayload{OrderID: "42", Reference: "\x00"}, wantField: "reference"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.p.Validate()
			if tc.wantField == "" {
				require.NoError(t, err)
				return
			}
			requireFieldErr(t, err, tc.wantField)
		})
	}
}

func TestFieldErrorMessageIsShort(t *testing.T) {
	t.Parallel()

	err := NewOpenSRSPayload(strings.Repeat("x", 500), "", false).Validate()
	requireFieldErr(t, err, "order_id")
	require.Less(t, len(err.Error()), 120, "long input is truncated in the message")
}

func TestDecode(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		taskType  string
		payload   string
		want      Payload
		wantReq   providers.Request
		wantErr   string // substring
		wantField string
	}{
		{
			name: "opensrs cert email", taskType: TypeOpenSRSResendCertEmail,
			payload: `{"order_id":"123","reference":"T-1"}`,
			want:    NewOpenSRSPayload("123", "T-1", false),
			wantReq: providers.Request{OrderID: "123", Action: providers.ActionResendCertEmail},
		},
		{
			name: "opensrs approve email", taskType: TypeOpenSRSResendApproveEmail,
			payload: `{"order_id":"123"}`,
			want:    NewOpenSRSPayload("123", "", true),
			wantReq: providers.Request{OrderID: "123", Action: providers.ActionResendApproveEmail},
		},
		{
			name: "digicert", taskType: TypeDigiCertResendEmails,
			payload: `{"order_id":"9","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"pt_BR","reference":"r"}`,
			want: &DigiCertPayload{OrderID: "9", Locale: "pt_BR", Reference: "r",
				DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
			wantReq: providers.Request{OrderID: "9", Action: providers.ActionResendCertEmail, Locale: "pt_BR",
				ApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
		},
		{name: "unknown type", taskType: "opensrs:frobnicate", payload: `{"order_id":"1"}`, wantErr: `unknown task type "opensrs:frobnicate"`},
		{name: "empty type", taskType: "", payload: `{"order_id":"1"}`, wantErr: "unknown task type"},
		{name: "invalid json", taskType: TypeOpenSRSResendCertEmail, payload: `{"order_id":`, wantErr: "not valid JSON"},
		{name: "empty payload", taskType: TypeDigiCertResendEmails, payload: ``, wantErr: "not valid JSON"},
		{name: "numeric order id", taskType: TypeOpenSRSResendCertEmail, payload: `{"order_id":123}`, wantErr: "not valid JSON"},
		{name: "array", taskType: TypeOpenSRSResendCertEmail, payload: `[]`, wantErr: "not valid JSON"},
		{name: "invalid order id", taskType: TypeOpenSRSResendCertEmail, payload: `{"order_id":"abc"}`, wantField: "order_id"},
		{name: "missing order id", taskType: TypeDigiCertResendEmails, payload: `{}`, wantField: "order_id"},
		{name: "null", taskType: TypeOpenSRSResendCertEmail, payload: `null`, wantField: "order_id"},
		{name: "digicert bad locale", taskType: TypeDigiCertResendEmails, payload: `{"order_id":"1","locale":"en-US"}`, wantField: "locale"},
		{name: "digicert 101 approval emails", taskType: TypeDigiCertResendEmails,
			payload: `{"order_id":"1","domain_approval_emails":[` + approvalEntries(101) + `]}`, wantField: "domain_approval_emails"},
		{name: "payload over 64 KiB", taskType: TypeOpenSRSResendCertEmail,
			payload: `{"order_id":"1"` + strings.Repeat(" ", MaxPayloadBytes) + `}`, wantField: "payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := Decode(tc.taskType, []byte(tc.payload))
			switch {
			case tc.wantField != "":
				require.Nil(t, p)
				requireFieldErr(t, err, tc.wantField)
			case tc.wantErr != "":
				require.Nil(t, p)
				require.ErrorContains(t, err, tc.wantErr)
				var fe *FieldError
				require.False(t, errors.As(err, &fe), "not a field error")
			default:
				require.NoError(t, err)
				require.Equal(t, tc.want, p)
				require.Equal(t, tc.taskType, p.Type())
				require.Equal(t, tc.wantReq, p.Request())
				require.True(t, Known(tc.taskType))
			}
		})
	}
}

func TestPayloadProviderAndQueue(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		p        Payload
		typ      string
		provider providers.Name
	}{
		{"opensrs cert", NewOpenSRSPayload("1", "r", false), TypeOpenSRSResendCertEmail, providers.OpenSRS},
		{"opensrs approve", NewOpenSRSPayload("1", "r", true), TypeOpenSRSResendApproveEmail, providers.OpenSRS},
		{"opensrs cert literal", &OpenSRSCertEmail{OpenSRSOrder{OrderID: "1", Reference: "r"}}, TypeOpenSRSResendCertEmail, providers.OpenSRS},
		{"opensrs approve literal", &OpenSRSApproveEmail{OpenSRSOrder{OrderID: "1", Reference: "r"}}, TypeOpenSRSResendApproveEmail, providers.OpenSRS},
		{"digicert", &DigiCertPayload{OrderID: "1", Reference: "r"}, TypeDigiCertResendEmails, providers.DigiCert},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.typ, tc.p.Type())
			require.Equal(t, tc.provider, tc.p.Provider())
			require.Contains(t, Queues, string(tc.p.Provider()))
			require.Equal(t, "1", tc.p.Order())
			require.Equal(t, "r", tc.p.Ref())
			require.Equal(t, "1", tc.p.Request().OrderID)
		})
	}
}

func TestPayloadJSON(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		p    Payload
		want string
	}{
		{"opensrs", NewOpenSRSPayload("123", "T-1", false), `{"order_id":"123","reference":"T-1"}`},
		{"opensrs approve, no action on the wire", NewOpenSRSPayload("123", "T-1", true), `{"order_id":"123","reference":"T-1"}`},
		{"opensrs empty reference omitted", NewOpenSRSPayload("123", "", false), `{"order_id":"123"}`},
		{"digicert full", &DigiCertPayload{OrderID: "9", Locale: "pt_BR", Reference: "r",
			DomainApprovalEmails: []providers.ApprovalEmail{{Domain: "example.com", Email: "admin@example.com"}}},
			`{"order_id":"9","domain_approval_emails":[{"domain":"example.com","email":"admin@example.com"}],"locale":"pt_BR","reference":"r"}`},
		{"digicert optional fields omitted", &DigiCertPayload{OrderID: "9"}, `{"order_id":"9"}`},
		{"digicert empty list omitted", &DigiCertPayload{OrderID: "9", DomainApprovalEmails: []providers.ApprovalEmail{}}, `{"order_id":"9"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(tc.p)
			require.NoError(t, err)
			require.Equal(t, tc.want, string(b))

			back, err := Decode(tc.p.Type(), b)
			require.NoError(t, err)
			b2, err := json.Marshal(back)
			require.NoError(t, err)
			require.Equal(t, tc.want, string(b2), "round trip")
		})
	}
}

func TestMeta(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name, payload, order, ref string
	}{
		{"strings", `{"order_id":"12","reference":"r"}`, "12", "r"},
		{"number order", `{"order_id":12}`, "12", ""},
		{"broken", `{"order_id":`, "", ""},
		{"not json", `hello`, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			order, ref := Meta([]byte(tc.payload))
			require.Equal(t, tc.order, order)
			require.Equal(t, tc.ref, ref)
		})
	}
}

// approvalEntries returns n distinct domain_approval_emails entries as JSON.
func approvalEntries(n int) string {
	entries := make([]string, n)
	for i := range entries {
		entries[i] = fmt.Sprintf(`{"domain":"d%d.example.com","email":"admin@d%d.example.com"}`, i, i)
	}
	return strings.Join(entries, ",")
}

func approvalList(n int, domain func(i int) string, email func(i int) string) []providers.ApprovalEmail {
	l := make([]providers.ApprovalEmail, n)
	for i := range l {
		l[i] = providers.ApprovalEmail{Domain: domain(i), Email: email(i)}
	}
	return l
}

func TestPayloadLimits(t *testing.T) {
	t.Parallel()

	// A 253-character hostname made distinct by its first label.
	longDomain := func(i int) string {
		first := fmt.Sprintf("d%03d", i)
		return first + "." + strings.Repeat(strings.Repeat("a", 62)+".", 3) + strings.Repeat("b", 253-len(first)-1-63*3-4) + ".com"
	}
	// A 254-character address at a 239-character domain.
	longEmail := func(i int) string {
		return strings.Repeat("x", 254-1-239) + "@" + longDomain(i)[253-239:]
	}
	tests := []struct {
		name      string
		p         *DigiCertPayload
		wantField string
	}{
		{"100 entries", &DigiCertPayload{OrderID: "1", DomainApprovalEmails: approvalList(100,
			func(i int) string { return fmt.Sprintf("d%d.example.com", i) },
			func(i int) string { return fmt.Sprintf("admin@d%d.example.com", i) })}, ""},
		{"101 entries", &DigiCertPayload{OrderID: "1", DomainApprovalEmails: approvalList(101,
			func(i int) string { return fmt.Sprintf("d%d.example.com", i) },
			func(i int) string { return fmt.Sprintf("admin@d%d.example.com", i) })}, "domain_approval_emails"},
		{"email of 254 characters", &DigiCertPayload{OrderID: "1", DomainApprovalEmails: approvalList(1, longDomain, longEmail)}, ""},
		{"email of 255 characters", &DigiCertPayload{OrderID: "1", DomainApprovalEmails: approvalList(1, longDomain,
			func(i int) string { return "y" + longEmail(i) })}, "domain_approval_emails[0].email"},
		{"largest payload the field limits allow", &DigiCertPayload{OrderID: "12345678901234567890", Locale: "pt_BR",
			Reference: strings.Repeat("日", MaxReferenceLen), DomainApprovalEmails: approvalList(100, longDomain, longEmail)}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, e := range tc.p.DomainApprovalEmails[:1] {
				require.LessOrEqual(t, len(e.Domain), 253)
			}
			task, err := NewTask(tc.p, DefaultOptions(), "")
			if tc.wantField != "" {
				requireFieldErr(t, err, tc.wantField)
				return
			}
			require.NoError(t, err)
			require.LessOrEqual(t, len(task.Payload()), MaxPayloadBytes)
			_, err = Decode(task.Type(), task.Payload())
			require.NoError(t, err, "what enqueue accepts, the worker accepts")
		})
	}

	t.Run("encoded payload over 64 KiB", func(t *testing.T) {
		t.Parallel()
		// Local parts that JSON escapes six-fold ("&" is \u0026) pass
		// every field rule yet overflow the payload limit.
		quoted := func(i int) string { return strings.Repeat("&", 200) + "@" + longDomain(i)[253-40:] }
		p := &DigiCertPayload{OrderID: "1", DomainApprovalEmails: approvalList(100, longDomain, quoted)}
		require.NoError(t, p.Validate())
		_, err := NewTask(p, DefaultOptions(), "")
		requireFieldErr(t, err, "payload")
	})
}

// TestHandlerDeadLettersOversizedPayload: a task put into Redis directly,
// past the enqueue CLI, with more than the limits allow is dead-lettered as
// invalid_payload, not dropped and not sent.
func TestHandlerDeadLettersOversizedPayload(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload []byte
		want    string
	}{
		{"101 approval emails", []byte(`{"order_id":"7","domain_approval_emails":[` + approvalEntries(101) + `]}`), "domain_approval_emails: must have at most 100 entries"},
		{"payload over 64 KiB", []byte(`{"order_id":"7","reference":"` + strings.Repeat("r", MaxPayloadBytes) + `"}`), "payload: must be at most 65536 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			redistest.Each(t, func(t *testing.T, b redistest.Backend) {
				hb := setupHandler(t, b, nil)
				info, err := asynq.NewClientFromRedisClient(hb.rdb).EnqueueContext(t.Context(),
					asynq.NewTask(TypeDigiCertResendEmails, tc.payload), asynq.Queue(QueueDigiCert), asynq.MaxRetry(5))
				require.NoError(t, err)
				hb.start(t)
				final := hb.waitFinal(t, QueueDigiCert, info.ID)
				require.Equal(t, asynq.TaskStateArchived, final.State)
				require.Contains(t, final.LastErr, tc.want)
				d, ok, err := hb.store.DeadLetter(t.Context(), info.ID)
				require.NoError(t, err)
				require.True(t, ok, "dead letter recorded")
				require.Equal(t, "invalid_payload", d.Class)
				require.Equal(t, tc.payload, []byte(d.Payload), "kept whole")
				require.Empty(t, hb.resender.Calls())
			})
		})
	}
}
