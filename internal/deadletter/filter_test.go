package deadletter_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/certmail/certmail/internal/deadletter"
	"github.com/certmail/certmail/internal/tasks"
)

// TestFilterValidateProviders: the provider filter accepts exactly the
// providers of the task-type table.
func TestFilterValidateProviders(t *testing.T) {
	t.Parallel()
	for _, k := range tasks.Kinds() {
		require.NoError(t, deadletter.Filter{Provider: string(k.Provider)}.Validate(), k.Type)
	}
	require.NoError(t, deadletter.Filter{}.Validate(), "no provider selects all")
	require.EqualError(t, deadletter.Filter{Provider: "sectigo"}.Validate(), `provider: must be opensrs or digicert, got "sectigo"`)
	require.EqualError(t, deadletter.Filter{Provider: "opensrs:resend_cert_email"}.Validate(),
		`provider: must be opensrs or digicert, got "opensrs:resend_cert_email"`, "a type is not a provider")
	require.EqualError(t, deadletter.Filter{Since: -1}.Validate(), "since: must not be negative")
}
