package redisconn

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		url      string
		wantKind Kind
		wantAddr []string // the server, the Sentinels or the cluster seeds
		wantDB   int
		wantTLS  bool
		master   string
		user     string
		password string
	}{
		{"default", DefaultURL, Single, []string{"127.0.0.1:6379"}, 0, false, "", "", ""},
		{"password and db", "redis://:s3cret@redis.internal:6380/3", Single, []string{"redis.internal:6380"}, 3, false, "", "", "s3cret"},
		{"tls", "rediss://user:s3cret@redis.internal:6380/0", Single, []string{"redis.internal:6380"}, 0, true, "", "user", "s3cret"},
		{"sentinel", "redis-sentinel://s1:26379,s2:26379,[::1]:26380?master=mymaster", Sentinel,
			[]string{"s1:26379", "s2:26379", "[::1]:26380"}, 0, false, "mymaster", "", ""},
		{"sentinel with db and password", "redis-sentinel://app:s3%2Fcret@s1:26379/5?master=m", Sentinel,
			[]string{"s1:26379"}, 5, false, "m", "app", "s3/cret"},
		{"sentinel password only", "redis-sentinel://:s3cret@s1:26379/?master=m", Sentinel, []string{"s1:26379"}, 0, false, "m", "", "s3cret"},
		{"sentinel tls", "rediss-sentinel://s1:26379/1?master=m", Sentinel, []string{"s1:26379"}, 1, true, "m", "", ""},
		{"sentinel scheme in capitals", "Redis-Sentinel://s1:26379?master=m", Sentinel, []string{"s1:26379"}, 0, false, "m", "", ""},
		{"cluster", "redis-cluster://n1:7000,n2:7001", Cluster, []string{"n1:7000", "n2:7001"}, 0, false, "", "", ""},
		{"cluster with auth and db 0", "redis-cluster://u:s3cret@n1:7000/0", Cluster, []string{"n1:7000"}, 0, false, "", "u", "s3cret"},
		{"cluster tls", "rediss-cluster://n1:7000", Cluster, []string{"n1:7000"}, 0, true, "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse(tc.url)
			require.NoError(t, err)
			require.Equal(t, tc.wantKind, c.Kind)
			switch c.Kind {
			case Single:
				require.Equal(t, tc.wantAddr, []string{c.Single.Addr})
				require.Equal(t, tc.wantDB, c.Single.DB)
				require.Equal(t, tc.wantTLS, c.Single.TLSConfig != nil)
				require.Equal(t, tc.user, c.Single.Username)
				require.Equal(t, tc.password, c.Single.Password)
			case Sentinel:
				f := c.Failover
				require.Equal(t, tc.wantAddr, f.SentinelAddrs)
				require.Equal(t, tc.wantDB, f.DB)
				require.Equal(t, tc.wantTLS, f.TLSConfig != nil)
				require.Equal(t, tc.master, f.MasterName)
				require.Equal(t, tc.user, f.Username)
				require.Equal(t, tc.password, f.Password)
			case Cluster:
				o := c.ClusterOpts
				require.Equal(t, tc.wantAddr, o.Addrs)
				require.Equal(t, tc.wantTLS, o.TLSConfig != nil)
				require.Equal(t, tc.user, o.Username)
				require.Equal(t, tc.password, o.Password)
			}
			require.NoError(t, c.NewClient().Close())
		})
	}
}

func TestParseSentinelPassword(t *testing.T) {
	t.Parallel()
	c, err := Parse("redis-sentinel://:pw@s1:26379/0?master=m&sentinel_password=s3%26cret&sentinel_username=admin")
	require.NoError(t, err)
	require.Equal(t, "s3&cret", c.Failover.SentinelPassword)
	require.Equal(t, "admin", c.Failover.SentinelUsername)
	require.Equal(t, "pw", c.Failover.Password)
}

// Every malformed URL is refused with one line that names the wrong part and
// contains neither password.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, url, wantErr string
	}{
		{"http scheme", "http://s3cret@x:1/0", `(scheme "http" is not one of`},
		{"unknown scheme", "redis-sentinels://:s3cret@x:1/0?master=m", `scheme "redis-sentinels"`},
		{"no scheme", "s3cret@x:1/0", "must be a URL like"},
		{"garbage", "::::", "must be a URL like"},
		{"bad db", "redis://:s3cret@x:1/notanumber", "invalid URL"},
		// url.Parse errors quote the whole URL: none may reach the message.
		{"bad port", "redis://user:s3cret@redis.internal:63x79/0", "port: address 1"},
		{"bad escape", "redis://user:s3cret%zz@redis.internal:6379/0", "password: invalid %-escape"},
		{"slash in password", "redis://user:s3cret/x@redis.internal:6379/0", "password: percent-encode"},
		{"space in host", "redis://user:s3cret@redis internal:6379/0", "must be a URL like"},
		{"escaped password, bad option", "redis://user:s3cre%74@redis.internal:6379/0?dial_timeout=soon", "invalid URL"},
		// Other clients take the password as a query option; go-redis does not.
		{"password option", "redis://redis.internal:6379/0?password=s3cret", "invalid URL"},

		{"sentinel no master", "redis-sentinel://:s3cret@s1:26379/0", "master: a redis-sentinel URL needs ?master=NAME"},
		{"sentinel empty master", "redis-sentinel://:s3cret@s1:26379/0?master=", "master:"},
		{"sentinel no hosts", "redis-sentinel://:s3cret@/0?master=m", "host list: no host:port"},
		{"sentinel empty host in list", "redis-sentinel://:s3cret@s1:26379,,s2:26379?master=m", "host list: address 2 is not host:port"},
		{"sentinel missing port", "redis-sentinel://:s3cret@s1:26379,s2?master=m", "host list: address 2 is not host:port"},
		{"sentinel no host", "redis-sentinel://:s3cret@:26379?master=m", "host list: address 1 has no host"},
		{"sentinel port not a number", "redis-sentinel://:s3cret@s1:26379,s2:2637x?master=m", "port: address 2 has an invalid port"},
		{"sentinel port out of range", "redis-sentinel://:s3cret@s1:65536?master=m", "port: address 1 has an invalid port"},
		{"sentinel bad db", "redis-sentinel://:s3cret@s1:26379/x?master=m", "db: the path must be a database number"},
		{"sentinel negative db", "redis-sentinel://:s3cret@s1:26379/-1?master=m", "db:"},
		{"sentinel unknown parameter", "redis-sentinel://:s3cret@s1:26379/0?master=m&pasword=s3cret", `query parameter "pasword": not supported`},
		{"sentinel password parameter", "redis-sentinel://s1:26379/0?master=m&password=s3cret", `query parameter "password": not supported`},
		{"sentinel twice", "redis-sentinel://:s3cret@s1:26379/0?master=m&master=n", `query parameter "master": given twice`},
		{"sentinel bad timeout", "redis-sentinel://:s3cret@s1:26379/0?master=m&dial_timeout=soon", `query parameter "dial_timeout": want a duration`},
		{"sentinel bad pool", "redis-sentinel://:s3cret@s1:26379/0?master=m&pool_size=0", `query parameter "pool_size": want a positive number`},
		{"sentinel bad escape in sentinel password", "redis-sentinel://s1:26379/0?master=m&sentinel_password=s3cret%zz", `query parameter "sentinel_password": invalid %-escape`},
		{"sentinel password with slash", "redis-sentinel://u:s3cret/x@s1:26379/0?master=m", "password: percent-encode"},
		{"sentinel password with question mark", "redis-sentinel://u:s3cret?x@s1:26379/0?master=m", "password: percent-encode"},
		{"sentinel fragment", "redis-sentinel://u:s3cret#x@s1:26379/0?master=m", "fragment:"},
		{"sentinel bad user escape", "redis-sentinel://u%zz:s3cret@s1:26379/0?master=m", "user: invalid %-escape"},
		{"cluster db", "redis-cluster://:s3cret@n1:7000/1", "db: Redis Cluster has only database 0"},
		{"cluster master parameter", "redis-cluster://:s3cret@n1:7000?master=m", `query parameter "master": not supported in a redis-cluster URL`},
		{"cluster bad port", "rediss-cluster://:s3cret@n1:0", "port: address 1 has an invalid port"},
		{"cluster no hosts", "redis-cluster://", "host list:"},
		{"parameter name from a password", "redis-sentinel://s1:26379/0?master=m&s3cret/x=1", "query parameter (unnamed)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse(tc.url)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.wantErr)
			require.NotContains(t, err.Error(), "s3cret", "password leaked into the error")
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"redis://:s3cret@host:6379/0", "redis://:xxxxx@host:6379/0"},
		{"redis://host:6379/0", "redis://host:6379/0"},
		{"rediss://u:s3cret@host:6379/0", "rediss://u:xxxxx@host:6379/0"},
		{"redis-sentinel://u:s3cret@s1:26379,s2:26379/2?master=m&sentinel_password=s3cret2",
			"redis-sentinel://u:xxxxx@s1:26379,s2:26379/2?master=m&sentinel_password=xxxxx"},
		{"redis-sentinel://s1:26379?master=m", "redis-sentinel://s1:26379?master=m"},
		{"rediss-cluster://:s3cret@n1:7000,n2:7001", "rediss-cluster://:xxxxx@n1:7000,n2:7001"},
		{"redis-cluster://u:s3cret/x@n1:7000", "(unparseable URL)"},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, Redact(tc.in), tc.in)
		require.False(t, strings.Contains(Redact(tc.in), "s3cret"))
	}
}

func TestConnectUnreachable(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, url, want string }{
		{"single", "redis://:s3cret@127.0.0.1:1/0", "redis unreachable at 127.0.0.1:1"},
		{"sentinel", "redis-sentinel://:s3cret@127.0.0.1:1,127.0.0.1:2/0?master=m&sentinel_password=s3cret2",
			`redis unreachable at master "m" via sentinels 127.0.0.1:1,127.0.0.1:2`},
		{"cluster", "redis-cluster://:s3cret@127.0.0.1:1", "redis unreachable at cluster nodes 127.0.0.1:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Connect(t.Context(), tc.url, 2*time.Second)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), "REDIS_URL")
			require.NotContains(t, err.Error(), "s3cret")
		})
	}
}
