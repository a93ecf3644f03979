package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/retryd/retryd/internal/config"
	"github.com/retryd/retryd/internal/timesync"
	"github.com/retryd/retryd/store/redisstore"
)

// newClock returns the clock every scheduling part runs on (README.md,
// "Time"): on Redis with --time-source auto, Redis's clock as measured by
// timesync, so that replicas whose clocks disagree dispatch and reap on one
// time; otherwise the local clock. RETRYD_TEST_CLOCK_SKEW moves the local
// clock, as a host whose clock is off would. The returned stop ends the
// measuring loop and closes its Redis connection.
func newClock(ctx context.Context, cfg config.Config, rtls *redisstore.ClientTLS, log *slog.Logger) (clockwork.Clock, func(), error) {
	local := clockwork.NewRealClock()
	if cfg.TestClockSkew != 0 {
		log.Warn("the local clock is moved for a test (RETRYD_TEST_CLOCK_SKEW)", "skew", cfg.TestClockSkew)
		local = timesync.Shift(local, cfg.TestClockSkew)
	}
	if cfg.RedisURL == "" || cfg.TimeSource == "local" {
		if cfg.RedisURL != "" {
			log.Warn("scheduling on the local clock (--time-source local): the replicas' clocks must agree, or retries are dispatched early by the skew")
		}
		return local, func() {}, nil
	}
	// A client of its own, so that a measurement never waits behind the
	// store's traffic (its round trip is the measurement's error bound).
	client, err := redisstore.NewClient(cfg.RedisURL, rtls)
	if err != nil {
		return nil, nil, err
	}
	// The key only picks the Cluster node: the one owning the prefix's slot.
	source := timesync.RedisSource(client, "{"+cfg.RedisPrefix+"}")
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	clock, err := timesync.New(startCtx, timesync.Config{Source: source, Base: local, Logger: log})
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("%w (retryd schedules on Redis's clock: the Redis user needs the TIME command, +time; or start with --time-source local)", err)
	}
	clock.Start(context.Background())
	return clock, func() {
		clock.Stop()
		_ = client.Close()
	}, nil
}
