package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/redistest"
)

// TestIdempotentNotStored: a 5xx answer, or one marked transient (a batch
// with an item Redis failed), is not stored for its key: the next request
// with the key runs again; a stored answer is not.
func TestIdempotentNotStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, redistest.Mini(t))
	tests := []struct {
		name   string
		first  response
		stored bool
	}{
		{"Accepted", response{Status: 202, CType: "application/json", Body: []byte(`{"a":1}`)}, true},
		{"BadRequest", response{Status: 400, CType: "application/problem+json", Body: []byte(`{}`)}, true},
		{"Unavailable", response{Status: 503, CType: "application/problem+json", Body: []byte(`{}`)}, false},
		{"TransientBatch", response{Status: 200, CType: "application/json", Body: []byte(`{"b":2}`), transient: true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runs := 0
			call := func() *httptest.ResponseRecorder {
				rq := httptest.NewRequest("POST", "/v1/resends", strings.NewReader("{}"))
				rq.Header.Set("Idempotency-Key", "key-"+tc.name)
				w := httptest.NewRecorder()
				e.srv.idempotent(w, rq, "billing", []byte("{}"), func() response {
					runs++
					if runs == 1 {
						return tc.first
					}
					return response{Status: 202, CType: "application/json", Body: []byte(`{"second":true}`)}
				})
				return w
			}
			w1 := call()
			require.Equal(t, tc.first.Status, w1.Code)
			w2 := call()
			if tc.stored {
				require.Equal(t, 1, runs)
				require.Equal(t, tc.first.Status, w2.Code)
				require.Equal(t, string(tc.first.Body), w2.Body.String())
				require.Equal(t, "true", w2.Header().Get("Idempotent-Replayed"))
			} else {
				require.Equal(t, 2, runs, "the key was released: the retry ran")
				require.Equal(t, http.StatusAccepted, w2.Code)
			}
		})
	}
}
