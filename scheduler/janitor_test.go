package scheduler_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/boltstore"
)

// scriptedExpire is a store whose Expire returns the given results in turn
// (then zero results); every other method is unused by the janitor.
type scriptedExpire struct {
	store.Store
	mu      sync.Mutex
	results []store.ExpireResult
	errs    []error
	calls   int
}

func (s *scriptedExpire) Expire(context.Context, time.Time) (store.ExpireResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.results) == 0 {
		return store.ExpireResult{}, nil
	}
	r, err := s.results[0], s.errs[0]
	s.results, s.errs = s.results[1:], s.errs[1:]
	return r, err
}

// syncBuffer is a log sink safe for the janitor's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestJanitorWorksOffBacklog: while the store says more is left, the
// janitor calls again at once (a store bounds each call; at one call per
// interval a busy deployment would never catch up), reports every pass to
// the metrics and logs the totals once.
func TestJanitorWorksOffBacklog(t *testing.T) {
	t.Parallel()
	st := &scriptedExpire{
		results: []store.ExpireResult{{ByAge: 1000, More: true}, {ByAge: 400, ByCount: 600, More: true}, {ByCount: 7, StatsHours: 2}},
		errs:    []error{nil, nil, nil},
	}
	var logs syncBuffer
	var seen []store.ExpireResult
	j, err := scheduler.NewJanitor(scheduler.JanitorConfig{
		Store: st, Clock: clockwork.NewFakeClockAt(base), Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnExpired: func(r store.ExpireResult) { seen = append(seen, r) },
	})
	require.NoError(t, err)
	total := j.RunOnce(t.Context())
	require.Equal(t, store.ExpireResult{ByAge: 1400, ByCount: 607, StatsHours: 2}, total)
	require.Equal(t, 3, st.calls)
	require.Len(t, seen, 3, "every pass is counted")
	require.Contains(t, logs.String(), "level=INFO msg=\"janitor: retention removed old data\" jobs_removed_by_age=1400 jobs_removed_by_count=607 stats_hours_removed=2")

	// A run that removes nothing logs nothing and counts nothing.
	logs = syncBuffer{}
	seen = nil
	require.Equal(t, store.ExpireResult{}, j.RunOnce(t.Context()))
	require.Empty(t, logs.String())
	require.Empty(t, seen)
}

// TestJanitorStopsOnError: a failing pass ends the run with a warning that
// keeps what was removed so far; it does not spin.
func TestJanitorStopsOnError(t *testing.T) {
	t.Parallel()
	st := &scriptedExpire{
		results: []store.ExpireResult{{ByAge: 10, More: true}, {ByAge: 3}},
		errs:    []error{nil, fmt.Errorf("redis: %w", store.ErrUnavailable)},
	}
	var logs syncBuffer
	j, err := scheduler.NewJanitor(scheduler.JanitorConfig{Store: st, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{ByAge: 13}, j.RunOnce(t.Context()))
	require.Equal(t, 2, st.calls)
	require.Contains(t, logs.String(), "level=WARN msg=\"janitor: retention run failed\"")
	require.Contains(t, logs.String(), "jobs_removed_by_age=13")
}

// TestJanitorCountBound runs the janitor on a real store with a count
// bound: the least recently updated terminal job goes at the first run,
// and the next run comes one interval later on the fake clock.
func TestJanitorCountBound(t *testing.T) {
	t.Parallel()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{MaxTerminalJobs: 2})
	require.NoError(t, err)
	defer st.Close()
	ctx := context.Background()
	clock := clockwork.NewFakeClockAt(base)
	for i := range 3 {
		_, err := st.RecordSuccess(ctx, store.Success{JobID: fmt.Sprintf("job-%d", i), Phase: "extraction", Now: base.Add(time.Duration(i) * time.Second)})
		require.NoError(t, err)
	}
	runs := make(chan store.ExpireResult, 10)
	j, err := scheduler.NewJanitor(scheduler.JanitorConfig{
		Store: st, Clock: clock, Interval: time.Hour,
		OnExpired: func(r store.ExpireResult) { runs <- r },
	})
	require.NoError(t, err)
	j.Start(ctx)
	defer j.Stop()
	require.Equal(t, store.ExpireResult{ByCount: 1}, <-runs)
	_, err = st.GetJob(ctx, "job-0")
	require.True(t, errors.Is(err, store.ErrNotFound), "job-0 was the least recently updated: %v", err)

	_, err = st.RecordSuccess(ctx, store.Success{JobID: "job-3", Phase: "extraction", Now: base.Add(time.Minute)})
	require.NoError(t, err)
	require.NoError(t, clock.BlockUntilContext(ctx, 1)) // the loop waits for the interval
	clock.Advance(time.Hour)
	require.Equal(t, store.ExpireResult{ByCount: 1}, <-runs)
	_, err = st.GetJob(ctx, "job-1")
	require.ErrorIs(t, err, store.ErrNotFound)
}

// TestJanitorStartStop: Start and Stop are safe to call in any order and
// concurrently.
func TestJanitorStartStop(t *testing.T) {
	t.Parallel()
	for range 20 {
		j, err := scheduler.NewJanitor(scheduler.JanitorConfig{Store: &scriptedExpire{}, Clock: clockwork.NewFakeClock()})
		require.NoError(t, err)
		j.Stop()
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(2)
			go func() { defer wg.Done(); j.Start(context.Background()) }()
			go func() { defer wg.Done(); j.Stop() }()
		}
		wg.Wait()
		j.Stop()
	}
}
