package providers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type detailed struct{ d Detail }

func (e *detailed) Error() string  { return "provider said no" }
func (e *detailed) Detail() Detail { return e.d }

func TestDescribe(t *testing.T) {
	t.Parallel()
	perm := &detailed{Detail{Provider: DigiCert, Class: Permanent, StatusCode: 404, Code: "not_found|order"}}
	rl := &detailed{Detail{Provider: OpenSRS, Class: RateLimited, RetryAfter: 2 * time.Second}}
	tests := []struct {
		name string
		err  error
		want Detail
	}{
		{"nil is success", nil, Detail{Class: Success}},
		{"provider error", perm, perm.d},
		{"wrapped provider error", fmt.Errorf("attempt 2: %w", rl), rl.d},
		{"unclassified error is transient, never dropped", errors.New("boom"), Detail{Class: Transient, Message: "boom"}},
		{"cancellation is transient", context.Canceled, Detail{Class: Transient, Message: "context canceled"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, Describe(tc.err))
			require.Equal(t, tc.want.Class, Classify(tc.err))
		})
	}
}

func TestClassString(t *testing.T) {
	t.Parallel()
	for c, want := range map[Class]string{
		Transient: "transient", Success: "success", RateLimited: "rate_limited",
		Permanent: "permanent", Configuration: "configuration", Class(42): "class(42)",
	} {
		require.Equal(t, want, c.String())
	}
}
