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

var base = time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)

type dispatchBundle struct {
	clock  *clockwork.FakeClock
	store  store.Store
	policy *scheduler.Policy
	disp   *scheduler.Dispatcher
}

func setupDispatcher(t *testing.T) *dispatchBundle {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	cfg := scheduler.DefaultPolicyConfig()
	cfg.Jitter = 0
	policy, err := scheduler.NewPolicy(cfg, nil)
	require.NoError(t, err)
	clock := clockwork.NewFakeClockAt(base)
	// MaxSleep of one fake second makes every step below a full pass of the
	// loop, so that the test never races the store's wake-up event.
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: st, Clock: clock, MaxSleep: time.Second})
	require.NoError(t, err)
	require.NoError(t, disp.Start(context.Background()))
	t.Cleanup(disp.Stop)
	return &dispatchBundle{clock: clock, store: st, policy: policy, disp: disp}
}

// fail records a failed attempt decided by the policy at the fake now.
func (b *dispatchBundle) fail(t *testing.T, job string, retryCount uint32, lease string) store.Verdict {
	t.Helper()
	now := b.clock.Now()
	v := b.policy.Decide(scheduler.Report{Phase: "extraction", RetryCount: retryCount, ErrorType: "ConnectionError"}, now)
	res, err := b.store.RecordFailure(context.Background(), store.Failure{
		JobID: job, Phase: "extraction", RetryCount: retryCount, LeaseID: lease,
		ErrorType: "ConnectionError", Now: now, Verdict: v,
	})
	require.NoError(t, err)
	return res.Verdict
}

// stepUntilTask advances the fake clock one second at a time, letting the
// dispatcher settle (its timer re-armed) after each step, until a task
// arrives; it returns the task and the fake time it arrived at.
func (b *dispatchBundle) stepUntilTask(t *testing.T, sub *scheduler.Subscription, limit time.Duration) (store.Task, time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for waited := time.Duration(0); waited <= limit; waited += time.Second {
		require.NoError(t, b.clock.BlockUntilContext(ctx, 1), "the dispatcher never re-armed its timer")
		select {
		case task := <-sub.Tasks():
			return task, b.clock.Now()
		default:
		}
		b.clock.Advance(time.Second)
	}
	t.Fatalf("no task within %v of fake time", limit)
	return store.Task{}, time.Time{}
}

// TestSpecScheduleOnFakeClock runs the specification's 60 s / 300 s / 900 s
// schedule on a fake clock: each retry is handed out at its due second,
// never before.
func TestSpecScheduleOnFakeClock(t *testing.T) {
	t.Parallel()
	b := setupDispatcher(t)
	sub, err := b.disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, MaxInFlight: 1})
	require.NoError(t, err)
	defer sub.Close()

	v := b.fail(t, "job", 0, "")
	for i, want := range []time.Duration{60 * time.Second, 300 * time.Second, 900 * time.Second} {
		require.Equal(t, store.DecisionRetry, v.Decision)
		require.Equal(t, want, v.Delay)
		reported := b.clock.Now()
		task, at := b.stepUntilTask(t, sub, 2*want)
		require.Equal(t, uint32(i+1), task.RetryCount)
		// Never before its due second; at most one step late when a wake-up
		// event and the step race.
		require.False(t, at.Before(reported.Add(want)), "retry %d handed out early, at +%v", i+1, at.Sub(reported))
		require.LessOrEqual(t, at.Sub(reported), want+time.Second, "retry %d handed out late", i+1)
		require.False(t, at.Before(task.DueAt), "handed out before due")
		v = b.fail(t, "job", task.RetryCount, task.LeaseID)
		b.disp.LeaseReleased(task.LeaseID)
	}
	require.Equal(t, store.DecisionGiveUp, v.Decision)
}

// TestMaxInFlight: a stream holds at most MaxInFlight unreported tasks; a
// released lease makes room for the next.
func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	b := setupDispatcher(t)
	for _, job := range []string{"a", "b", "c"} {
		b.fail(t, job, 0, "")
	}
	b.clock.Advance(time.Minute)
	sub, err := b.disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, MaxInFlight: 2})
	require.NoError(t, err)
	defer sub.Close()
	got := []store.Task{<-sub.Tasks(), <-sub.Tasks()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, b.clock.BlockUntilContext(ctx, 1))
	select {
	case task := <-sub.Tasks():
		t.Fatalf("a third task while two are unreported: %v", task)
	default:
	}
	b.fail(t, got[0].JobID, got[0].RetryCount, got[0].LeaseID)
	b.disp.LeaseReleased(got[0].LeaseID)
	third := <-sub.Tasks()
	require.NotEqual(t, got[0].JobID, third.JobID)
	require.NotEqual(t, got[1].JobID, third.JobID)
}

// TestCloseReturnsUnsentTasks: tasks claimed for a stream that closes
// before sending them go back to the schedule, unrun and uncounted.
func TestCloseReturnsUnsentTasks(t *testing.T) {
	t.Parallel()
	b := setupDispatcher(t)
	b.fail(t, "job", 0, "")
	b.clock.Advance(time.Minute)
	sub, err := b.disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, MaxInFlight: 1})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(sub.Tasks()) == 1 }, 5*time.Second, time.Millisecond)
	sub.Close()
	job, err := b.store.GetJob(context.Background(), "job")
	require.NoError(t, err)
	require.True(t, job.InBackoff(), "the task is scheduled again")
	require.Len(t, job.Attempts, 1, "no attempt was counted")

	again, err := b.disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, MaxInFlight: 1})
	require.NoError(t, err)
	defer again.Close()
	task := <-again.Tasks()
	require.Equal(t, uint32(1), task.RetryCount)
}

// TestStartStopConcurrently: Start and Stop from many goroutines, Stop
// before Start, and Stop twice are all safe (run under -race).
func TestStartStopConcurrently(t *testing.T) {
	t.Parallel()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{})
	require.NoError(t, err)
	defer st.Close()
	for range 20 {
		d, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: st, Clock: clockwork.NewFakeClock()})
		require.NoError(t, err)
		d.Stop() // before Start: harmless
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(2)
			go func() { defer wg.Done(); _ = d.Start(context.Background()) }()
			go func() { defer wg.Done(); d.Stop() }()
		}
		wg.Wait()
		d.Stop()
		_, err = d.Subscribe(scheduler.SubscribeRequest{Phases: []string{"x"}})
		require.Error(t, err, "a stopped dispatcher takes no subscriptions")
	}
}
