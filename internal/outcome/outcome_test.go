package outcome

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPayloadJSON(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		payload  string
		wantJSON string // the payload as it appears in the record
	}{
		{"object", `{"order_id":"1","reference":"r"}`, `{"order_id":"1","reference":"r"}`},
		{"nested object", `{"order_id":"1","domain_approval_emails":[{"domain":"a.com","email":"x@a.com"}]}`,
			`{"order_id":"1","domain_approval_emails":[{"domain":"a.com","email":"x@a.com"}]}`},
		{"array", `[1,2]`, `[1,2]`},
		{"number", `42`, `"42"`},
		{"invalid json", `{"order_id":`, `"{\"order_id\":"`},
		{"plain text", `hello`, `"hello"`},
		{"json string", `"abc"`, `"\"abc\""`},
		{"object with spaces is an object", `{"order_id": "1", "reference": "r"}`, `{"order_id":"1","reference":"r"}`},
		{"object with html chars is an object", `{"reference":"<a&b>"}`, `{"reference":"\u003ca\u0026b\u003e"}`},
		{"leading whitespace", " {}", `{}`},
		{"empty", ``, `""`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(Payload(tc.payload))
			require.NoError(t, err)
			require.Equal(t, tc.wantJSON, string(b))
			require.True(t, json.Valid(b))

			// Inside a record and back: byte for byte.
			d := DeadLetter{ID: "t1", Payload: Payload(tc.payload), LastFailedAt: time.Unix(1, 0).UTC()}
			rb, err := json.Marshal(d)
			require.NoError(t, err)
			var back DeadLetter
			require.NoError(t, json.Unmarshal(rb, &back))
			var p Payload
			require.NoError(t, json.Unmarshal(b, &p))
			if tc.wantJSON[0] == '"' { // kept as a string: byte for byte
				require.Equal(t, tc.payload, string(back.Payload))
				require.Equal(t, tc.payload, string(p))
			} else { // kept as a JSON value: same value
				require.JSONEq(t, tc.payload, string(back.Payload))
				require.JSONEq(t, tc.payload, string(p))
			}
		})
	}
}

func TestPayloadIsObjectInRecord(t *testing.T) {
	t.Parallel()

	b, err := json.Marshal(DeadLetter{ID: "t1", Payload: Payload(`{"order_id":"1"}`)})
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, map[string]any{"order_id": "1"}, m["payload"])
}
