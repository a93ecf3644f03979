package timesync

import (
	"context"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
)

// RedisSource reads Redis's clock with TIME. On Redis Cluster it asks the
// primary that owns key's hash slot, the one holding every key of retryd's
// prefix: Cluster nodes each have their own clock, and the scripts run on
// that primary. The Redis user needs the TIME command (+time).
func RedisSource(client redis.UniversalClient, key string) Source {
	return func(ctx context.Context) (time.Time, error) {
		if cc, ok := client.(*redis.ClusterClient); ok {
			node, err := cc.MasterForKey(ctx, key)
			if err != nil {
				return time.Time{}, err
			}
			return node.Time(ctx).Result()
		}
		return client.Time(ctx).Result()
	}
}

// Shift returns base with its wall clock moved by d: Now reads d later
// (earlier when d is negative); elapsed times and timers are unchanged. It
// stands for a host whose clock is off, in tests (RETRYD_TEST_CLOCK_SKEW).
func Shift(base clockwork.Clock, d time.Duration) clockwork.Clock {
	return shifted{Clock: base, d: d}
}

type shifted struct {
	clockwork.Clock
	d time.Duration
}

func (s shifted) Now() time.Time                  { return s.Clock.Now().Add(s.d) }
func (s shifted) Since(t time.Time) time.Duration { return s.Now().Sub(t) }
func (s shifted) Until(t time.Time) time.Duration { return t.Sub(s.Now()) }
