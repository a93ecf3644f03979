package boltstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// Calls that find nothing to change do not commit: the file is byte for
// byte what it was, and no transaction was committed. A claim that finds
// nothing due is the common one (the dispatcher claims whenever a lease is
// released); the others are a repeated report, a refusal, a lease
// extension to an earlier time and a janitor run with nothing to expire.
func TestNoOpsLeaveTheFileUntouched(t *testing.T) {
	t.Parallel()
	s := open(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := t.Context()
	phases := []string{"extraction", "chunking"}
	fail := store.Failure{
		JobID: "job-1", Phase: "extraction", ErrorType: "Timeout", ErrorMessage: "timed out",
		Payload: []byte("p"), Now: base,
		Verdict: store.Verdict{
			Decision: store.DecisionRetry, Retryable: true, Reason: "retry.",
			NextRetryCount: 1, Delay: time.Minute, DueAt: base.Add(time.Minute),
		},
	}
	_, err := s.RecordFailure(ctx, fail)
	require.NoError(t, err)
	_, err = s.RecordFailure(ctx, store.Failure{
		JobID: "job-2", Phase: "chunking", ErrorType: "Timeout", Now: base,
		Verdict: store.Verdict{
			Decision: store.DecisionRetry, Retryable: true, Reason: "retry.",
			NextRetryCount: 1, Delay: time.Second, DueAt: base.Add(time.Second),
		},
	})
	require.NoError(t, err)
	tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"chunking"}, Limit: 1, Now: base.Add(time.Second), LeaseFor: time.Hour, WorkerID: "w"})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	lease := tasks[0]

	unchanged := func(what string, call func()) {
		t.Helper()
		id, before := txid(t, s.db), fileBytes(t, s.Path())
		call()
		require.Equal(t, id, txid(t, s.db), "%s: no commit", what)
		require.Equal(t, before, fileBytes(t, s.Path()), "%s: the file is untouched", what)
	}
	unchanged("a claim before anything is due", func() {
		got, err := s.Claim(ctx, store.ClaimRequest{Phases: phases, Limit: 10, Now: base.Add(time.Minute - time.Microsecond), LeaseFor: time.Minute})
		require.NoError(t, err)
		require.Empty(t, got)
	})
	unchanged("a claim of phases with nothing scheduled", func() {
		got, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"chunking", "kg_ingest"}, Limit: 10, Now: base.Add(time.Hour), LeaseFor: time.Minute})
		require.NoError(t, err)
		require.Empty(t, got)
	})
	unchanged("a repeated report", func() {
		res, err := s.RecordFailure(ctx, fail)
		require.NoError(t, err)
		require.True(t, res.Duplicate)
	})
	unchanged("a refused report", func() {
		f := fail
		f.RetryCount = 5
		_, err := s.RecordFailure(ctx, f)
		require.ErrorIs(t, err, store.ErrAttemptPending)
	})
	unchanged("a lease extension to an earlier time", func() {
		until, err := s.ExtendLease(ctx, lease.JobID, lease.LeaseID, base.Add(time.Minute), base.Add(2*time.Second))
		require.NoError(t, err)
		require.Equal(t, lease.LeaseExpiresAt, until)
	})
	unchanged("a janitor run with nothing to expire", func() {
		res, err := s.Expire(ctx, base.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, store.ExpireResult{}, res)
	})

	// And the same claim once the retry is due does commit.
	id := txid(t, s.db)
	got, err := s.Claim(ctx, store.ClaimRequest{Phases: phases, Limit: 10, Now: base.Add(time.Minute), LeaseFor: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, "job-1", got[0].JobID)
	require.Equal(t, id+1, txid(t, s.db))
}
