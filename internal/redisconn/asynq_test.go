package redisconn

import (
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/require"
)

func TestAsynqOpt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		want    asynq.RedisConnOpt
		wantTLS string // expected TLS server name, "" for none, "*" for TLS without a fixed name
	}{
		{"Plain", "redis://localhost:6379/0", asynq.RedisClientOpt{Network: "tcp", Addr: "localhost:6379"}, ""},
		{"PasswordAndDB", "redis://:pw@redis:6379/3", asynq.RedisClientOpt{Network: "tcp", Addr: "redis:6379", Password: "pw", DB: 3}, ""},
		{"TLSWithUser", "rediss://worker:pw@cache.example.net:6380/1",
			asynq.RedisClientOpt{Network: "tcp", Addr: "cache.example.net:6380", Username: "worker", Password: "pw", DB: 1}, "cache.example.net"},
		// asynq.ParseRedisURI (v0.26.0) drops this DB: ours keeps it.
		{"SentinelKeepsDB", "redis-sentinel://u:pw@s1:26379,s2:26380/4?master=mymaster&sentinel_password=spw",
			asynq.RedisFailoverClientOpt{MasterName: "mymaster", SentinelAddrs: []string{"s1:26379", "s2:26380"},
				SentinelPassword: "spw", Username: "u", Password: "pw", DB: 4}, ""},
		{"SentinelTLS", "rediss-sentinel://s1:26379?master=m&sentinel_username=su",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"}, SentinelUsername: "su"}, "*"},
		{"Cluster", "redis-cluster://:pw@n1:7000,n2:7001,n3:7002",
			asynq.RedisClusterClientOpt{Addrs: []string{"n1:7000", "n2:7001", "n3:7002"}, Password: "pw"}, ""},
		{"ClusterTLS", "rediss-cluster://u:pw@n1:7000/0",
			asynq.RedisClusterClientOpt{Addrs: []string{"n1:7000"}, Username: "u", Password: "pw"}, "*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := AsynqOpt(tc.url)
			require.NoError(t, err)
			switch o := got.(type) {
			case asynq.RedisClientOpt:
				checkTLS(t, tc.wantTLS, o.TLSConfig != nil, func() string { return o.TLSConfig.ServerName })
				o.TLSConfig = nil
				o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolSize = 0, 0, 0, 0
				got = o
			case asynq.RedisFailoverClientOpt:
				checkTLS(t, tc.wantTLS, o.TLSConfig != nil, func() string { return o.TLSConfig.ServerName })
				o.TLSConfig = nil
				got = o
			case asynq.RedisClusterClientOpt:
				checkTLS(t, tc.wantTLS, o.TLSConfig != nil, func() string { return o.TLSConfig.ServerName })
				o.TLSConfig = nil
				got = o
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func checkTLS(t *testing.T, want string, has bool, name func() string) {
	t.Helper()
	switch want {
	case "":
		require.False(t, has, "TLS config")
	case "*":
		require.True(t, has, "TLS config")
		require.Empty(t, name(), "server name is taken from each address")
	default:
		require.True(t, has, "TLS config")
		require.Equal(t, want, name())
	}
}

func TestAsynqOptTimeouts(t *testing.T) {
	t.Parallel()
	got, err := AsynqOpt("redis-sentinel://s1:26379/2?master=m&dial_timeout=2s&read_timeout=7&write_timeout=1500ms&pool_size=9")
	require.NoError(t, err)
	o := got.(asynq.RedisFailoverClientOpt)
	require.Equal(t, []time.Duration{2 * time.Second, 7 * time.Second, 1500 * time.Millisecond}, []time.Duration{o.DialTimeout, o.ReadTimeout, o.WriteTimeout})
	require.Equal(t, 9, o.PoolSize)
	require.Equal(t, 2, o.DB)
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
		{"SentinelNoMaster", "redis-sentinel://u:" + secret + "@h:26379/0", "master:"},
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
