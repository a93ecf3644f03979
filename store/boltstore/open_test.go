package boltstore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

var base = time.Date(2026, time.March, 2, 9, 0, 0, 0, time.UTC)

// A second retryd on the same file fails at once, with a message that
// names the file and says why; once the first is gone, it opens.
func TestSecondOpenFailsFast(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "data", "retryd.db")
	first, err := Open(path, Options{})
	require.NoError(t, err)

	start := time.Now()
	second, err := Open(path, Options{})
	elapsed := time.Since(start)
	require.Nil(t, second)
	require.ErrorIs(t, err, ErrLocked)
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "another retryd holds it")
	require.Less(t, elapsed, 2*time.Second, "the second Open must not hang")
	t.Logf("second Open failed after %v: %v", elapsed.Round(time.Millisecond), err)

	require.NoError(t, first.Close())
	again, err := Open(path, Options{})
	require.NoError(t, err)
	require.NoError(t, again.Close())
}

func TestOptions(t *testing.T) {
	t.Parallel()
	got, err := Options{}.withDefaults()
	require.NoError(t, err)
	require.Equal(t, Options{
		JobRetention:    store.DefaultJobRetention,
		StatsRetention:  store.DefaultStatsRetention,
		MaxTerminalJobs: store.DefaultMaxTerminalJobs,
		LockTimeout:     DefaultLockTimeout,
		MaxBatchSize:    DefaultMaxBatchSize,
	}, got)

	for _, c := range []struct {
		opts  Options
		field string
	}{
		{Options{JobRetention: -time.Hour}, "JobRetention"},
		{Options{StatsRetention: -time.Hour}, "StatsRetention"},
		{Options{LockTimeout: -time.Second}, "LockTimeout"},
		{Options{MaxBatchSize: -1}, "MaxBatchSize"},
		{Options{MaxTerminalJobs: -2}, "MaxTerminalJobs"},
	} {
		_, err := Open(filepath.Join(t.TempDir(), "retryd.db"), c.opts)
		require.ErrorContains(t, err, "Options."+c.field)
	}
}

// A file written by a newer retryd (a higher schema version) is refused
// rather than misread.
func TestNewerSchemaRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "retryd.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{schemaVersion + 1})
	}))
	require.NoError(t, s.Close())
	_, err = Open(path, Options{})
	require.ErrorContains(t, err, "newer than this retryd understands")
}

// After Close, calls fail with store.ErrUnavailable and subscriptions end.
func TestClosed(t *testing.T) {
	t.Parallel()
	s := open(t, Options{})
	ctx := t.Context()
	events, err := s.Subscribe(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, open := <-events
	require.False(t, open, "Close ends subscriptions")

	require.ErrorIs(t, s.Ping(ctx), store.ErrUnavailable)
	_, err = s.GetJob(ctx, "job-1")
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = s.RecordFailure(ctx, store.Failure{JobID: "job-1", Phase: "extraction", Now: base})
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = s.Subscribe(ctx)
	require.ErrorIs(t, err, store.ErrUnavailable)
}

// state is everything the store shows, for comparing a store with itself
// after a reopen.
type state struct {
	Jobs       []store.Job
	List       []store.Job
	Stats      []store.PhaseStats
	NextDue    time.Time
	NextExpiry time.Time
	Expired    []store.Lease
}

func readState(t *testing.T, s *Store, ids []string) state {
	t.Helper()
	ctx := t.Context()
	var st state
	for _, id := range ids {
		j, err := s.GetJob(ctx, id)
		require.NoError(t, err)
		st.Jobs = append(st.Jobs, j)
	}
	page, err := s.ListJobs(ctx, store.ListQuery{Limit: 100})
	require.NoError(t, err)
	st.List = page.Jobs
	st.Stats, err = s.Stats(ctx, store.StatsQuery{Since: base.Add(-time.Hour), Until: base.Add(time.Hour)})
	require.NoError(t, err)
	st.NextDue, _, err = s.NextDue(ctx, []string{"extraction", "chunking"})
	require.NoError(t, err)
	st.NextExpiry, _, err = s.NextLeaseExpiry(ctx)
	require.NoError(t, err)
	st.Expired, err = s.ExpiredLeases(ctx, base.Add(24*time.Hour), 100)
	require.NoError(t, err)
	return st
}

// seed records a few jobs in every state: scheduled, leased, failed,
// completed, handed off.
func seed(t *testing.T, s *Store) []string {
	t.Helper()
	ctx := t.Context()
	fail := func(id, phase string, rc uint32, now time.Time, lease string, retry bool) {
		f := store.Failure{
			JobID: id, Phase: phase, RetryCount: rc, LeaseID: lease, ErrorType: "Timeout",
			ErrorMessage: "read timed out\n\x00]]", Payload: []byte(`{"doc":"` + id + `"}`),
			Labels: map[string]string{"document_id": id}, Now: now,
			Verdict: store.Verdict{Decision: store.DecisionGiveUp, Reason: "gave up."},
		}
		if retry {
			f.Verdict = store.Verdict{
				Decision: store.DecisionRetry, Retryable: true, Reason: "retry.",
				NextRetryCount: rc + 1, Delay: time.Minute, DueAt: now.Add(time.Minute),
			}
		}
		_, err := s.RecordFailure(ctx, f)
		require.NoError(t, err)
	}
	fail("scheduled", "extraction", 0, base, "", true)
	fail("leased", "chunking", 0, base, "", true)
	_, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"chunking"}, Limit: 1, Now: base.Add(time.Minute), LeaseFor: time.Minute, WorkerID: "w1"})
	require.NoError(t, err)
	fail("failed", "extraction", 0, base.Add(time.Second), "", false)
	_, err = s.RecordSuccess(ctx, store.Success{JobID: "completed", Phase: "extraction", Output: []byte("out"), Now: base.Add(2 * time.Second)})
	require.NoError(t, err)
	_, err = s.RecordSuccess(ctx, store.Success{
		JobID: "handed-off", Phase: "extraction", NextPhase: "chunking", NextPayload: []byte("next"), Now: base.Add(3 * time.Second),
	})
	require.NoError(t, err)
	return []string{"scheduled", "leased", "failed", "completed", "handed-off"}
}

func TestReopenKeepsEverything(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "retryd.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	ids := seed(t, s)
	before := readState(t, s, ids)
	require.NoError(t, s.Close())

	s, err = Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	after := readState(t, s, ids)
	if d := cmp.Diff(before, after, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("state after reopen (-before +after):\n%s", d)
	}
	require.Len(t, after.Expired, 1, "the lease survives")

	// The schedule works on: the scheduled retry is claimed, once.
	tasks, err := s.Claim(context.Background(), store.ClaimRequest{
		Phases: []string{"extraction", "chunking"}, Limit: 10, Now: base.Add(time.Hour), LeaseFor: time.Minute,
	})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	require.Equal(t, "scheduled", tasks[0].JobID)
}
