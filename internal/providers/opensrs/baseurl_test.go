package opensrs_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/providers/opensrs"
)

// TestBaseURLUsesSharedRules: WithBaseURL goes through httpx.ParseBaseURL,
// whose table (httpx/baseurl_test.go) covers every rule; here one refusal
// shows the client uses it, names itself and hides the password.
func TestBaseURLUsesSharedRules(t *testing.T) {
	t.Parallel()
	_, err := opensrs.New(opensrs.WithCredentials("reseller", "0123456789abcdef"), opensrs.WithBaseURL("https://user:s3cretPW@api.example.com:44x/"))
	require.ErrorContains(t, err, "opensrs: invalid base URL")
	require.NotContains(t, err.Error(), "s3cret")
}
