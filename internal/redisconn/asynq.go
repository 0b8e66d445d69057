package redisconn

import "github.com/hibiken/asynq"

// AsynqOpt parses raw as Parse does and returns the connection option for
// asynq and asynqmon, which build their own client from it (the dashboard
// does): user, password, database, timeouts, pool size and, for rediss://,
// the TLS config. The error never contains the password.
func AsynqOpt(raw string) (asynq.RedisClientOpt, error) {
	o, err := Parse(raw)
	if err != nil {
		return asynq.RedisClientOpt{}, err
	}
	return asynq.RedisClientOpt{
		Network:      o.Network,
		Addr:         o.Addr,
		Username:     o.Username,
		Password:     o.Password,
		DB:           o.DB,
		DialTimeout:  o.DialTimeout,
		ReadTimeout:  o.ReadTimeout,
		WriteTimeout: o.WriteTimeout,
		PoolSize:     o.PoolSize,
		TLSConfig:    o.TLSConfig,
	}, nil
}
