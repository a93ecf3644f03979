package boltstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// storedAttempts reads the job's attempt records as stored.
func storedAttempts(t *testing.T, s *Store, id string) []*attemptRecord {
	t.Helper()
	var out []*attemptRecord
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJob).Cursor()
		prefix := attemptsPrefix(id)
		for k, v := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
			a, err := decodeAttempt(v)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	}))
	return out
}

// An attempt refers to its phase's stored payload instead of keeping a
// copy, and keeps the payload it ran with when a later report replaces the
// stored one.
func TestAttemptsSharePayloads(t *testing.T) {
	t.Parallel()
	s := open(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := t.Context()
	retry := func(now time.Time, next uint32) store.Verdict {
		return store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "retry.", NextRetryCount: next, Delay: time.Second, DueAt: now.Add(time.Second)}
	}
	claim := func(now time.Time) store.Task {
		tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, Now: now, LeaseFor: time.Minute, WorkerID: "w"})
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		return tasks[0]
	}
	at := base
	_, err := s.RecordFailure(ctx, store.Failure{JobID: "j", Phase: "extraction", ErrorType: "E", Payload: []byte("p1"), Now: at, Verdict: retry(at, 1)})
	require.NoError(t, err)
	// #1 runs with the stored payload, reported without one.
	at = at.Add(time.Second)
	task := claim(at)
	require.Equal(t, []byte("p1"), task.Payload)
	_, err = s.RecordFailure(ctx, store.Failure{JobID: "j", Phase: "extraction", RetryCount: 1, LeaseID: task.LeaseID, ErrorType: "E", Now: at, Verdict: retry(at, 2)})
	require.NoError(t, err)
	// #2 is reported with the same payload again: nothing to copy.
	at = at.Add(time.Second)
	task = claim(at)
	_, err = s.RecordFailure(ctx, store.Failure{JobID: "j", Phase: "extraction", RetryCount: 2, LeaseID: task.LeaseID, ErrorType: "E", Payload: []byte("p1"), Now: at, Verdict: retry(at, 3)})
	require.NoError(t, err)
	for _, a := range storedAttempts(t, s, "j") {
		require.True(t, a.PayloadRef, "attempt #%d shares the stored payload", a.RetryCount)
		require.Empty(t, a.Payload, "attempt #%d keeps no copy", a.RetryCount)
	}
	// #3 is reported with a new payload: #0–#2 get their own copy of p1.
	at = at.Add(time.Second)
	task = claim(at)
	_, err = s.RecordFailure(ctx, store.Failure{JobID: "j", Phase: "extraction", RetryCount: 3, LeaseID: task.LeaseID, ErrorType: "E", Payload: []byte("p2"), Now: at, Verdict: retry(at, 4)})
	require.NoError(t, err)
	stored := storedAttempts(t, s, "j")
	require.Len(t, stored, 4)
	for _, a := range stored {
		if a.RetryCount < 3 {
			require.False(t, a.PayloadRef, "attempt #%d", a.RetryCount)
			require.Equal(t, []byte("p1"), a.Payload, "attempt #%d", a.RetryCount)
		} else {
			require.True(t, a.PayloadRef)
		}
	}
	// A success that hands off to the same phase with another payload
	// copies p2 into #3 and into the success itself.
	at = at.Add(time.Second)
	task = claim(at)
	require.Equal(t, []byte("p2"), task.Payload)
	_, err = s.RecordSuccess(ctx, store.Success{JobID: "j", Phase: "extraction", RetryCount: 4, LeaseID: task.LeaseID, NextPhase: "extraction", NextPayload: []byte("p3"), Now: at})
	require.NoError(t, err)

	j, err := s.GetJob(ctx, "j")
	require.NoError(t, err)
	require.Len(t, j.Attempts, 5)
	for i, want := range []string{"p1", "p1", "p1", "p2", "p2"} {
		require.Equal(t, []byte(want), j.Attempts[i].Payload, "attempt #%d", j.Attempts[i].RetryCount)
	}
}
