package timesync_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/internal/timesync"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// reference is a reference clock seen from a local fake clock: it runs
// skew behind the local clock, and each call takes the next round trip of
// rtts (the last one repeats), half before and half after the reading
// unless readAt says which share of it comes before (0 to 1).
type reference struct {
	local  *clockwork.FakeClock
	mu     sync.Mutex
	skew   time.Duration
	rtts   []time.Duration
	readAt float64
	err    error
	calls  int
}

func (r *reference) read(context.Context) (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.err != nil {
		return time.Time{}, r.err
	}
	rtt := r.rtts[min(r.calls-1, len(r.rtts)-1)]
	before := rtt / 2
	if r.readAt != 0 {
		before = time.Duration(float64(rtt) * r.readAt)
	}
	r.local.Advance(before)
	now := r.local.Now().Add(-r.skew)
	r.local.Advance(rtt - before)
	return now, nil
}

func (r *reference) set(skew time.Duration, rtts ...time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skew, r.rtts, r.calls = skew, rtts, 0
}

func newReference(skew time.Duration, rtts ...time.Duration) *reference {
	return &reference{local: clockwork.NewFakeClockAt(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)), skew: skew, rtts: rtts}
}

// TestNowIsTheReference: a local clock 5 s ahead reads the reference's
// time, keeps it as local time passes, and the skew is reported.
func TestNowIsTheReference(t *testing.T) {
	ref := newReference(5*time.Second, time.Millisecond)
	c, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, c.Last().Skew)
	require.Equal(t, time.Millisecond, c.Last().RTT)
	// The reading, taken in the middle of the call, counts as of its end:
	// the clock is half the round trip behind, never ahead.
	want := ref.local.Now().Add(-5*time.Second - time.Millisecond/2)
	require.Equal(t, want, c.Now())
	ref.local.Advance(90 * time.Second)
	require.Equal(t, want.Add(90*time.Second), c.Now())
	require.Equal(t, 90*time.Second, c.Since(want))
	require.Equal(t, 10*time.Second, c.Until(want.Add(100*time.Second)))
}

// TestBestSampleCounts: of one measurement's calls, the shortest round trip
// is used (its reading has the smallest error).
func TestBestSampleCounts(t *testing.T) {
	ref := newReference(-2*time.Second, 15*time.Millisecond, 2*time.Millisecond, 9*time.Millisecond)
	c, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
	require.NoError(t, err)
	require.Equal(t, 2*time.Millisecond, c.Last().RTT)
	require.Equal(t, -2*time.Second, c.Last().Skew)
}

// TestSlowReadingsAreDiscarded: a measurement whose best round trip is over
// MaxRTT is not used: New keeps trying and gives up with an error that says
// so; a running clock keeps its previous measurement.
func TestSlowReadingsAreDiscarded(t *testing.T) {
	ref := newReference(time.Second, 50*time.Millisecond)
	_, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
	require.ErrorContains(t, err, "within 20ms (best round trip 50ms in 60 tries)")

	// Slow first tries, then a fast one: New waits for it.
	ref.set(time.Second, 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond, time.Millisecond)
	measured := make(chan timesync.Measurement, 10)
	c, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet,
		OnMeasure: func(m timesync.Measurement) { measured <- m }})
	require.NoError(t, err)
	require.Equal(t, time.Millisecond, (<-measured).RTT)

	// Running: the reference moves, but the next measurement is slow.
	c.Start(context.Background())
	defer c.Stop()
	before := c.Now()
	ref.set(3*time.Second, 40*time.Millisecond)
	require.NoError(t, ref.local.BlockUntilContext(context.Background(), 1))
	ref.local.Advance(timesync.DefaultInterval)
	require.Eventually(t, func() bool {
		ref.mu.Lock()
		defer ref.mu.Unlock()
		return ref.calls == timesync.DefaultSamples
	}, 5*time.Second, time.Millisecond)
	require.Equal(t, time.Second, c.Last().Skew, "the slow measurement was not used")
	// Time went on by the local clock: the interval and the three slow calls.
	require.Equal(t, before.Add(timesync.DefaultInterval+3*40*time.Millisecond), c.Now())

	// A fast one is.
	ref.set(3*time.Second, time.Millisecond)
	require.NoError(t, ref.local.BlockUntilContext(context.Background(), 1))
	ref.local.Advance(timesync.DefaultInterval)
	m := <-measured
	require.Equal(t, 3*time.Second, m.Skew)
	require.Equal(t, ref.local.Now().Add(-3*time.Second-time.Millisecond/2), c.Now())
}

// TestNeverAhead: wherever in the round trip the reference was read — at
// its very end when the request waited in a busy Redis and the reply came
// straight back — the clock does not read ahead of the reference, and is
// behind it by at most the round trip.
func TestNeverAhead(t *testing.T) {
	for _, at := range []float64{1e-9, 0.25, 0.5, 0.75, 1} {
		ref := newReference(2*time.Second, 4*time.Millisecond)
		ref.readAt = at
		c, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
		require.NoError(t, err)
		truth := ref.local.Now().Add(-2 * time.Second)
		require.False(t, c.Now().After(truth), "read at %.2f of the round trip: the clock is %v ahead", at, c.Now().Sub(truth))
		require.LessOrEqual(t, truth.Sub(c.Now()), 4*time.Millisecond, "read at %.2f: behind by more than the round trip", at)
	}
}

// TestUnreadableReference: New fails with the source's error.
func TestUnreadableReference(t *testing.T) {
	ref := newReference(0, time.Millisecond)
	ref.err = errors.New("NOPERM this user has no permissions to run the 'time' command")
	_, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
	require.ErrorContains(t, err, "NOPERM")
}

// TestStartStop: Stop is idempotent and safe before Start; Start twice is
// one loop.
func TestStartStop(t *testing.T) {
	ref := newReference(0, time.Millisecond)
	c, err := timesync.New(context.Background(), timesync.Config{Source: ref.read, Base: ref.local, Logger: quiet})
	require.NoError(t, err)
	c.Stop()
	c.Start(context.Background())
	c.Start(context.Background())
	c.Stop()
	c.Stop()
}

// TestRedisTime: against a real Redis on this host, a local clock shifted
// by +7 s measures a skew of 7 s, and the clock reads the real time.
func TestRedisTime(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"single", "cluster"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var client redis.UniversalClient
			if kind == "cluster" {
				cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{testredis.Start(t, testredis.Cluster()).Addr()}})
				t.Cleanup(func() { cc.Close() })
				client = cc
			} else {
				client = testredis.Start(t).Client() // closed by testredis
			}
			c, err := timesync.New(context.Background(), timesync.Config{
				Source: timesync.RedisSource(client, "{retryd}"),
				Base:   timesync.Shift(clockwork.NewRealClock(), 7*time.Second),
				MaxRTT: time.Second, // a loaded test machine; the bound itself is TestSlowReadingsAreDiscarded's
				Logger: quiet,
			})
			require.NoError(t, err)
			m := c.Last()
			require.InDelta(t, float64(7*time.Second), float64(m.Skew), float64(m.RTT/2+time.Millisecond),
				"skew %v, round trip %v", m.Skew, m.RTT)
			// Never ahead of the real time (Redis's, on this host), behind by at most the round trip.
			behind := time.Since(c.Now())
			require.GreaterOrEqual(t, behind, -100*time.Microsecond, "the clock reads %v ahead of Redis's", -behind)
			require.LessOrEqual(t, behind, m.RTT+time.Millisecond)
		})
	}
}
