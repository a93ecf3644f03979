package scheduler_test

import (
	"context"
	"fmt"
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

// claimLog is a store that records every Claim it serves.
type claimLog struct {
	store.Store
	mu     sync.Mutex
	claims []store.ClaimRequest
}

func (c *claimLog) Claim(ctx context.Context, r store.ClaimRequest) ([]store.Task, error) {
	c.mu.Lock()
	c.claims = append(c.claims, r)
	c.mu.Unlock()
	return c.Store.Claim(ctx, r)
}

func (c *claimLog) log() []store.ClaimRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]store.ClaimRequest(nil), c.claims...)
}

// setupGroups schedules n retries due at the fake now and returns a
// dispatcher over them, not started, so that a test can subscribe several
// streams before the first pass.
func setupGroups(t *testing.T, n int) (*scheduler.Dispatcher, *claimLog) {
	disp, log, _ := setupGroupsClock(t, n)
	return disp, log
}

func setupGroupsClock(t *testing.T, n int) (*scheduler.Dispatcher, *claimLog, *clockwork.FakeClock) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clock := clockwork.NewFakeClockAt(base)
	for i := range n {
		_, err := st.RecordFailure(context.Background(), store.Failure{
			JobID: fmt.Sprintf("job-%d", i), Phase: "extraction", ErrorType: "Timeout", Now: base,
			Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "r", NextRetryCount: 1, Delay: time.Minute, DueAt: base.Add(time.Minute)},
		})
		require.NoError(t, err)
	}
	clock.Advance(time.Minute)
	log := &claimLog{Store: st}
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: log, Clock: clock})
	require.NoError(t, err)
	t.Cleanup(disp.Stop)
	return disp, log, clock
}

func receive(t *testing.T, sub *scheduler.Subscription, n int) []store.Task {
	t.Helper()
	var got []store.Task
	for range n {
		select {
		case task := <-sub.Tasks():
			got = append(got, task)
		case <-time.After(10 * time.Second):
			t.Fatalf("received %d of %d tasks", len(got), n)
		}
	}
	return got
}

// TestOneWorkersStreamsShareAClaim: the streams of one worker (same phases,
// worker id and lease duration) are served by one Claim for their combined
// room, whose tasks are shared out among them.
func TestOneWorkersStreamsShareAClaim(t *testing.T) {
	t.Parallel()
	disp, log := setupGroups(t, 6)
	var subs []*scheduler.Subscription
	for range 3 {
		sub, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: "w", MaxInFlight: 2})
		require.NoError(t, err)
		defer sub.Close()
		subs = append(subs, sub)
	}
	require.NoError(t, disp.Start(context.Background()))
	seen := map[string]bool{}
	for _, sub := range subs {
		for _, task := range receive(t, sub, 2) {
			require.False(t, seen[task.JobID], "%s handed out twice", task.JobID)
			seen[task.JobID] = true
		}
	}
	claims := log.log()
	require.Equal(t, 6, claims[0].Limit, "one claim for the three streams' room")
	require.Equal(t, "w", claims[0].WorkerID)
}

// TestEachWorkerLeasesUnderItsOwnID: streams of different workers are
// claimed for separately, so that every lease names the worker whose
// stream received the task.
func TestEachWorkerLeasesUnderItsOwnID(t *testing.T) {
	t.Parallel()
	disp, log := setupGroups(t, 4)
	subs := map[string]*scheduler.Subscription{}
	for _, w := range []string{"w1", "w2"} {
		sub, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: w, MaxInFlight: 2})
		require.NoError(t, err)
		defer sub.Close()
		subs[w] = sub
	}
	require.NoError(t, disp.Start(context.Background()))
	for w, sub := range subs {
		for _, task := range receive(t, sub, 2) {
			job, err := log.GetJob(context.Background(), task.JobID)
			require.NoError(t, err)
			require.Equal(t, w, job.WorkerID, "%s went to %s's stream", task.JobID, w)
			require.Equal(t, task.LeaseID, job.LeaseID)
		}
	}
	for _, c := range log.log() {
		require.LessOrEqual(t, c.Limit, 2, "a claim is for one worker's room")
	}
}

// TestDifferentLeaseDurationsClaimApart: a stream that asked for another
// lease duration is not claimed for with the others.
func TestDifferentLeaseDurationsClaimApart(t *testing.T) {
	t.Parallel()
	disp, _ := setupGroups(t, 2)
	short, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: "w", MaxInFlight: 1, LeaseFor: time.Minute})
	require.NoError(t, err)
	defer short.Close()
	long, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: "w", MaxInFlight: 1, LeaseFor: time.Hour})
	require.NoError(t, err)
	defer long.Close()
	require.NoError(t, disp.Start(context.Background()))
	a, b := receive(t, short, 1)[0], receive(t, long, 1)[0]
	// A lease runs from the claim's horizon, ClaimAhead after the claim:
	// the worker has its whole duration from when the task is due.
	require.Equal(t, base.Add(2*time.Minute+scheduler.DefaultClaimAhead), a.LeaseExpiresAt)
	require.Equal(t, base.Add(time.Minute+time.Hour+scheduler.DefaultClaimAhead), b.LeaseExpiresAt)
}

// TestDrainedPhaseIsNotClaimedAgain: once a claim of a pass took everything
// due in a phase, the other workers of that phase are not claimed for in
// the same pass (each claim is a round trip or a commit).
func TestDrainedPhaseIsNotClaimedAgain(t *testing.T) {
	t.Parallel()
	disp, log, clock := setupGroupsClock(t, 0)
	var subs []*scheduler.Subscription
	for _, w := range []string{"w1", "w2", "w3"} {
		sub, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: w, MaxInFlight: 2})
		require.NoError(t, err)
		defer sub.Close()
		subs = append(subs, sub)
	}
	require.NoError(t, disp.Start(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Nothing is due: the loop settles on its timer.
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	before := len(log.log())

	// One retry falls due now; its event wakes the loop for one pass.
	now := clock.Now()
	_, err := log.RecordFailure(ctx, store.Failure{
		JobID: "job", Phase: "extraction", ErrorType: "Timeout", Now: now,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "r", NextRetryCount: 1, Delay: time.Millisecond, DueAt: now},
	})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n := 0
		for _, sub := range subs {
			n += len(sub.Tasks())
		}
		return n == 1
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, clock.BlockUntilContext(ctx, 1))
	require.Len(t, log.log()[before:], 1, "one claim drained the phase; the other workers were skipped")
}
