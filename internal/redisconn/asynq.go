package redisconn

import "github.com/hibiken/asynq"

// AsynqOpt parses raw as Parse does and returns the connection option for
// asynq and asynqmon, which build their own client from it (the dashboard
// does): asynq.RedisClientOpt, RedisFailoverClientOpt (database kept, unlike
// asynq.ParseRedisURI) or RedisClusterClientOpt, with the user, passwords,
// timeouts, pool size and TLS config of the URL. The error never contains
// a password.
func AsynqOpt(raw string) (asynq.RedisConnOpt, error) {
	c, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	return c.AsynqOpt(), nil
}

// AsynqOpt is the asynq connection option for c.
func (c *Conn) AsynqOpt() asynq.RedisConnOpt { return c.asynqOpt() }
