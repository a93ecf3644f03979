package scheduler_test

import (
	"context"
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

// TestClaimAhead: a retry is claimed ClaimAhead before its due time, not
// sooner, in one Claim with every other retry due by then, and AwaitDue
// holds each until it is due.
func TestClaimAhead(t *testing.T) {
	t.Parallel()
	const ahead = 50 * time.Millisecond
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clock := clockwork.NewFakeClockAt(base)
	// Three retries due 10 s from now, 20 ms apart: all within ahead of the first.
	for i, job := range []string{"a", "b", "c"} {
		due := base.Add(10*time.Second + time.Duration(i)*20*time.Millisecond)
		_, err := st.RecordFailure(context.Background(), store.Failure{
			JobID: job, Phase: "extraction", ErrorType: "ConnectionError", Now: base,
			Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, NextRetryCount: 1, DueAt: due, Delay: due.Sub(base)},
		})
		require.NoError(t, err)
	}
	counting := &claimCounter{Store: st}
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: counting, Clock: clock, ClaimAhead: ahead, MaxSleep: time.Minute})
	require.NoError(t, err)
	sub, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, MaxInFlight: 3})
	require.NoError(t, err)
	defer sub.Close()
	require.NoError(t, disp.Start(context.Background()))
	t.Cleanup(disp.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The loop sleeps until ahead before the first due time: not a moment sooner.
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	clock.Advance(10*time.Second - ahead - time.Millisecond)
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	require.Empty(t, sub.Tasks(), "claimed more than ClaimAhead before due")
	// Woken (late, as a busy loop may be) when all three are due within
	// ClaimAhead: one Claim takes them all.
	clock.Advance(41 * time.Millisecond)
	var tasks []store.Task
	for range 3 {
		select {
		case task := <-sub.Tasks():
			tasks = append(tasks, task)
		case <-ctx.Done():
			t.Fatalf("got %d of 3 tasks", len(tasks))
		}
	}
	require.Equal(t, 1, counting.claims(), "the three retries due within ClaimAhead took one Claim")
	for _, task := range tasks {
		require.True(t, task.DueAt.After(clock.Now()), "%s was due already: the test does not test holding", task.JobID)
	}

	// AwaitDue returns at each task's due time, not before.
	for _, task := range tasks {
		returned := make(chan error, 1)
		go func() { returned <- sub.AwaitDue(ctx, task) }()
		if rest := clock.Until(task.DueAt); rest > 0 {
			require.NoError(t, clock.BlockUntilContext(ctx, 2)) // the loop's timer and AwaitDue's
			clock.Advance(rest - time.Microsecond)
			select {
			case err := <-returned:
				t.Fatalf("AwaitDue returned %v %v before the task was due", err, clock.Until(task.DueAt))
			case <-time.After(20 * time.Millisecond):
			}
			clock.Advance(time.Microsecond)
		}
		require.NoError(t, <-returned)
		require.False(t, clock.Now().Before(task.DueAt))
		_, err := st.RecordSuccess(context.Background(), store.Success{
			JobID: task.JobID, Phase: task.Phase, RetryCount: task.RetryCount, LeaseID: task.LeaseID, Now: clock.Now(),
		})
		require.NoError(t, err)
		disp.LeaseReleased(task.LeaseID)
	}

	// A stream that ends while its task waits gets the context's error.
	canceled, stop := context.WithCancel(ctx)
	stop()
	err = sub.AwaitDue(canceled, store.Task{DueAt: clock.Now().Add(time.Hour)})
	require.ErrorIs(t, err, context.Canceled)
}

// claimCounter counts Claim calls.
type claimCounter struct {
	store.Store
	mu sync.Mutex
	n  int
}

func (c *claimCounter) Claim(ctx context.Context, r store.ClaimRequest) ([]store.Task, error) {
	tasks, err := c.Store.Claim(ctx, r)
	if len(tasks) > 0 {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return tasks, err
}

func (c *claimCounter) claims() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
