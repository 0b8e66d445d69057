package main

import (
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/certmail/certmail/internal/outage"
	"github.com/certmail/certmail/internal/providers"
)

// guardOutage puts next behind provider p's outage circuit, shared by every
// worker through Redis (OUTAGE_THRESHOLD 0 or off: next itself).
func guardOutage(next providers.Resender, rdb redis.UniversalClient, cfg *config, p providers.Name, cred string, log *slog.Logger) providers.Resender {
	return outage.Wrap(next, rdb, outage.Config{Provider: p, Credential: cred, Threshold: cfg.outageThreshold,
		Window: cfg.outageWindow, ProbeInterval: cfg.outageProbe, Logger: log})
}
