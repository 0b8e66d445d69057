package redistest

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

func TestProxy(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		forward bool
		wantSet bool
	}{
		{"command forwarded, reply lost", true, true},
		{"command dropped before Redis", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := Real(t)
			direct := b.Client(t)
			opt, err := redis.ParseURL(b.URL)
			require.NoError(t, err)
			p := NewProxy(t, opt.Addr)
			opt.Addr = p.Addr()
			opt.MaxRetries = -1 // see the fault itself, not go-redis's retry
			c := redis.NewClient(opt)
			t.Cleanup(func() { _ = c.Close() })

			require.NoError(t, c.Set(t.Context(), "before", "1", 0).Err(), "the proxy forwards")
			tripped := p.Inject(Fault{Match: Command("SET"), Forward: tc.forward})
			require.Error(t, c.Set(t.Context(), "k", "v", 0).Err(), "the client never hears the reply")
			<-tripped

			n, err := direct.Exists(t.Context(), "k").Result()
			require.NoError(t, err)
			require.Equal(t, tc.wantSet, n == 1)
			require.Contains(t, p.Seen(), "set")

			// The fault fired once: a new connection works again.
			require.NoError(t, c.Set(t.Context(), "after", "1", 0).Err())
		})
	}

	t.Run("refuse new connections", func(t *testing.T) {
		t.Parallel()
		b := Real(t)
		opt, err := redis.ParseURL(b.URL)
		require.NoError(t, err)
		p := NewProxy(t, opt.Addr)
		opt.Addr = p.Addr()
		opt.MaxRetries = -1
		c := redis.NewClient(opt)
		t.Cleanup(func() { _ = c.Close() })

		p.Refuse(true)
		require.Error(t, c.Ping(t.Context()).Err())
		p.Refuse(false)
		require.NoError(t, c.Ping(t.Context()).Err())
	})

	t.Run("drop after n commands", func(t *testing.T) {
		t.Parallel()
		b := Real(t)
		direct := b.Client(t)
		opt, err := redis.ParseURL(b.URL)
		require.NoError(t, err)
		p := NewProxy(t, opt.Addr)
		opt.Addr = p.Addr()
		opt.MaxRetries = -1
		c := redis.NewClient(opt)
		t.Cleanup(func() { _ = c.Close() })
		require.NoError(t, c.Ping(t.Context()).Err()) // connection set-up is not counted below

		tripped := p.DropAfter(2)
		require.NoError(t, c.Incr(t.Context(), "n").Err())
		require.Error(t, c.Incr(t.Context(), "n").Err())
		<-tripped
		v, err := direct.Get(t.Context(), "n").Int()
		require.NoError(t, err)
		require.Equal(t, 2, v, "both commands ran")
	})
}
