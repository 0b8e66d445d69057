package redisconn

import (
	"testing"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"
)

func TestAsynqOpt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		want    asynq.RedisClientOpt
		wantTLS string // expected TLS server name, "" for none
	}{
		{"Plain", "redis://localhost:6379/0", asynq.RedisClientOpt{Network: "tcp", Addr: "localhost:6379"}, ""},
		{"PasswordAndDB", "redis://:pw@redis:6379/3", asynq.RedisClientOpt{Network: "tcp", Addr: "redis:6379", Password: "pw", DB: 3}, ""},
		{"TLSWithUser", "rediss://worker:pw@cache.example.net:6380/1",
			asynq.RedisClientOpt{Network: "tcp", Addr: "cache.example.net:6380", Username: "worker", Password: "pw", DB: 1}, "cache.example.net"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := AsynqOpt(tc.url)
			require.NoError(t, err)
			if tc.wantTLS == "" {
				require.Nil(t, got.TLSConfig)
			} else {
				require.NotNil(t, got.TLSConfig)
				require.Equal(t, tc.wantTLS, got.TLSConfig.ServerName)
			}
			got.TLSConfig = nil
			got.DialTimeout, got.ReadTimeout, got.WriteTimeout, got.PoolSize = 0, 0, 0, 0
			require.Equal(t, tc.want, got)
		})
	}
}

func TestAsynqOptErrors(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55word"
	tests := []struct {
		name, url, wantErr string
	}{
		{"Empty", "", "must be a URL like redis://"},
		{"NotRedis", "http://u:" + secret + "@host/x", "must be a URL like redis://"},
		{"BadOption", "redis://u:" + secret + "@host:6379/0?password=" + secret, "invalid URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := AsynqOpt(tc.url)
			require.ErrorContains(t, err, tc.wantErr)
			require.NotContains(t, err.Error(), secret)
		})
	}
}
