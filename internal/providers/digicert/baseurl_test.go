package digicert_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/digicert"
)

// TestBaseURLUsesSharedRules: WithBaseURL goes through httpx.ParseBaseURL,
// whose table (httpx/baseurl_test.go) covers every rule; here one refusal
// shows the client uses it, names itself and hides the password.
func TestBaseURLUsesSharedRules(t *testing.T) {
	t.Parallel()
	_, err := digicert.New(digicert.WithAPIKey("ABCDEF0123456789"), digicert.WithBaseURL("https://user:s3cretPW@api.example.com:44x/"))
	require.ErrorContains(t, err, "digicert: invalid base URL")
	require.NotContains(t, err.Error(), "s3cret")
}
