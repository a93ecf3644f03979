package scheduler_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// readOnlyStore answers reads (a retry is due) and refuses every claim, as
// a Redis replica left behind by a failover does (READONLY).
type readOnlyStore struct {
	store.Store
	due    time.Time
	claims atomic.Int64
}

func (s *readOnlyStore) Claim(context.Context, store.ClaimRequest) ([]store.Task, error) {
	s.claims.Add(1)
	return nil, fmt.Errorf("%w: READONLY You can't write against a read only replica", store.ErrUnavailable)
}

func (s *readOnlyStore) NextDue(context.Context, []string) (time.Time, bool, error) {
	return s.due, true, nil
}

func (s *readOnlyStore) Subscribe(ctx context.Context) (<-chan store.Event, error) {
	ch := make(chan store.Event)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

// TestClaimFailureBacksOff: when claims fail while the store says work is
// due, the dispatcher waits RetryBackoff between attempts instead of
// spinning on the due time.
func TestClaimFailureBacksOff(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClockAt(base)
	st := &readOnlyStore{due: base.Add(-time.Minute)}
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{
		Store: st, Clock: clock, RetryBackoff: 250 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	require.NoError(t, disp.Start(context.Background()))
	defer disp.Stop()
	sub, err := disp.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}})
	require.NoError(t, err)
	defer sub.Close()

	// The first claim may come twice (the subscription's wake-up can race
	// the loop's first pass); after that, each claim needs the fake clock
	// to move by RetryBackoff. Without the backoff the loop claims
	// thousands of times in the real milliseconds below.
	require.Eventually(t, func() bool { return st.claims.Load() >= 1 }, 10*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	n := st.claims.Load()
	require.LessOrEqual(t, n, int64(2), "the dispatcher claimed again without waiting")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 {
		require.NoError(t, clock.BlockUntilContext(ctx, 1), "the dispatcher never armed its timer")
		clock.Advance(250 * time.Millisecond)
		require.Eventually(t, func() bool { return st.claims.Load() > n }, 10*time.Second, time.Millisecond)
		time.Sleep(20 * time.Millisecond)
		require.Equal(t, n+1, st.claims.Load(), "one claim per backoff")
		n++
	}
}
