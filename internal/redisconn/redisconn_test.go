package redisconn

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		url      string
		wantAddr string
		wantDB   int
		wantTLS  bool
		wantErr  bool
	}{
		{"default", DefaultURL, "127.0.0.1:6379", 0, false, false},
		{"password and db", "redis://:s3cret@redis.internal:6380/3", "redis.internal:6380", 3, false, false},
		{"tls", "rediss://user:s3cret@redis.internal:6380/0", "redis.internal:6380", 0, true, false},
		{"http scheme", "http://s3cret@x:1/0", "", 0, false, true},
		{"bad db", "redis://:s3cret@x:1/notanumber", "", 0, false, true},
		{"garbage", "::::", "", 0, false, true},
		// url.Parse errors quote the whole URL: none may reach the message.
		{"bad port", "redis://user:s3cret@redis.internal:63x79/0", "", 0, false, true},
		{"bad escape", "redis://user:s3cret%zz@redis.internal:6379/0", "", 0, false, true},
		{"slash in password", "redis://user:s3cret/x@redis.internal:6379/0", "", 0, false, true},
		{"space in host", "redis://user:s3cret@redis internal:6379/0", "", 0, false, true},
		{"escaped password, bad option", "redis://user:s3cre%74@redis.internal:6379/0?dial_timeout=soon", "", 0, false, true},
		// Other clients take the password as a query option; go-redis does not.
		{"password option", "redis://redis.internal:6379/0?password=s3cret", "", 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opt, err := Parse(tc.url)
			if tc.wantErr {
				require.Error(t, err)
				require.NotContains(t, err.Error(), "s3cret", "password leaked into the error")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantAddr, opt.Addr)
			require.Equal(t, tc.wantDB, opt.DB)
			require.Equal(t, tc.wantTLS, opt.TLSConfig != nil)
		})
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	require.Equal(t, "redis://:xxxxx@host:6379/0", Redact("redis://:s3cret@host:6379/0"))
	require.Equal(t, "redis://host:6379/0", Redact("redis://host:6379/0"))
}

func TestConnectUnreachable(t *testing.T) {
	t.Parallel()
	_, err := Connect(t.Context(), "redis://:s3cret@127.0.0.1:1/0", 2*time.Second)
	require.Error(t, err)
	require.Contains(t, err.Error(), "redis unreachable at 127.0.0.1:1")
	require.Contains(t, err.Error(), "REDIS_URL")
	require.NotContains(t, err.Error(), "s3cret")
}
