package metrics

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// counters gathers every sample of the named counter, keyed by its label
// values joined with ",".
func counters(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			key := ""
			for i, l := range s.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			out[key] = s.GetCounter().GetValue()
		}
	}
	return out
}

// TestExpired: retention removals are counted by reason, both reasons are
// exported before the first removal, and stats hours have their own counter.
func TestExpired(t *testing.T) {
	t.Parallel()
	m := New()
	require.Equal(t, map[string]float64{"reason=age": 0, "reason=count": 0}, counters(t, m, "retryd_jobs_expired_total"))

	m.Expired(store.ExpireResult{ByAge: 3, ByCount: 1000, StatsHours: 2})
	m.Expired(store.ExpireResult{ByCount: 5, More: true})
	require.Equal(t, map[string]float64{"reason=age": 3, "reason=count": 1005}, counters(t, m, "retryd_jobs_expired_total"))
	require.Equal(t, map[string]float64{"": 2}, counters(t, m, "retryd_stats_hours_expired_total"))
}

// TestClock: the clock gauges read the latest measurement at each scrape,
// and exist only once registered (a replica on its own clock has none).
func TestClock(t *testing.T) {
	t.Parallel()
	gauge := func(m *Metrics, name string) (float64, bool) {
		families, err := m.Registry.Gather()
		require.NoError(t, err)
		for _, f := range families {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	m := New()
	_, ok := gauge(m, "retryd_clock_skew_seconds")
	require.False(t, ok, "not before RegisterClock")

	skew, rtt := 3*time.Second, 250*time.Microsecond
	m.RegisterClock(func() (time.Duration, time.Duration) { return skew, rtt })
	v, ok := gauge(m, "retryd_clock_skew_seconds")
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	v, _ = gauge(m, "retryd_clock_rtt_seconds")
	require.Equal(t, 0.00025, v)
	skew = -1500 * time.Millisecond
	v, _ = gauge(m, "retryd_clock_skew_seconds")
	require.Equal(t, -1.5, v, "read at scrape time")
}
