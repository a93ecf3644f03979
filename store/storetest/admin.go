package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// failedInChunking drives jobID through the specification's pipeline until
// it fails in chunking: extraction fails once and succeeds on its retry,
// handing chunking a payload; chunking fails, and its retry gives up. It
// returns the reports in order.
type chunkingFailure struct {
	f0 store.Failure // extraction #0, unleased, retried
	s1 store.Success // extraction #1, leased, hands off to chunking
	f2 store.Failure // chunking #0, unleased, without payload, retried
	f3 store.Failure // chunking #1, leased, gives up
	t1 store.Task    // the lease of extraction #1
	t3 store.Task    // the lease of chunking #1
}

func (h *harness) failInChunking(jobID string) chunkingFailure {
	h.t.Helper()
	var c chunkingFailure
	c.f0 = failure(jobID, extraction, 0, at(0))
	h.fail(c.f0)
	c.t1 = h.claimOne(at(time.Minute), extraction)
	c.s1 = leasedSuccess(c.t1, at(time.Minute+10*time.Second))
	c.s1.NextPhase = chunking
	c.s1.NextPayload = []byte(`{"text_location":"s3://text/` + jobID + `"}`)
	h.succeed(c.s1)
	c.f2 = failure(jobID, chunking, 0, at(2*time.Minute))
	c.f2.Payload = nil
	h.fail(c.f2)
	c.t3 = h.claimOne(at(3*time.Minute), chunking)
	c.f3 = leasedFailure(c.t3, at(3*time.Minute+20*time.Second))
	c.f3.ErrorType, c.f3.ErrorMessage, c.f3.HTTPStatus = "ValidationError", "chunk 7 is empty", 422
	c.f3.Verdict = giveUp("ValidationError is not retryable.")
	h.fail(c.f3)
	return c
}

// attempts are the four attempts of failInChunking, as GetJob shows them.
func (c chunkingFailure) attempts() []store.Attempt {
	return []store.Attempt{
		failedAttempt(c.f0, 1, c.f0.Payload, "", at(0)),
		succeededAttempt(c.s1, 1, c.f0.Payload, "worker-1", at(time.Minute)),
		failedAttempt(c.f2, 1, c.s1.NextPayload, "", at(2*time.Minute)),
		failedAttempt(c.f3, 1, c.s1.NextPayload, "worker-1", at(3*time.Minute)),
	}
}

func testRetryJob(t *testing.T, newStore Factory) {
	t.Run("DefaultPhaseIsMostRecentFailure", func(t *testing.T) {
		h := setup(t, newStore)
		c := h.failInChunking("job-1")
		failed := h.job("job-1")
		requireEqual(t, store.Job{
			ID: "job-1", State: store.StateFailed, Phase: chunking, Cycle: 1, Labels: labelsOf("job-1"),
			LastFailedPhase: chunking, LastFailedRetryCount: 1, LastFailedAt: c.f3.Now,
			LastErrorType: c.f3.ErrorType, LastError: c.f3.ErrorMessage,
			FinalError: c.f3.ErrorMessage, FinalErrorType: c.f3.ErrorType, TotalRetries: 1,
			CreatedAt: at(0), UpdatedAt: c.f3.Now,
			Attempts: c.attempts(),
		}, failed, "the failed job")

		got, err := h.s.RetryJob(h.ctx, "job-1", "", at(time.Hour))
		require.NoError(t, err)
		// Reading: a manual retry clears FinalError, FinalErrorType and
		// TotalRetries: they say how a cycle ended, and the new one has not
		// ended. The attempts keep the history; LastFailed* still names the
		// most recent failure.
		want := failed
		want.State, want.Cycle = store.StateProcessing, 2
		want.PendingPhase, want.PendingRetryCount, want.DueAt = chunking, 0, at(time.Hour)
		want.FinalError, want.FinalErrorType, want.TotalRetries = "", "", 0
		want.UpdatedAt = at(time.Hour)
		requireEqual(t, withoutAttempts(want), got, "RetryJob's job")
		h.requireJob(want)
		require.True(t, got.InBackoff())

		due, ok := h.nextDue(chunking)
		require.True(t, ok)
		require.True(t, due.Equal(at(time.Hour)), "due now: %v", due)
		require.Empty(t, h.claim(at(time.Hour-time.Microsecond), 10, chunking))
		task := h.claimOne(at(time.Hour), chunking)
		requireEqual(t, store.Task{
			JobID: "job-1", Phase: chunking, RetryCount: 0, Cycle: 2,
			Payload: c.s1.NextPayload, Labels: labelsOf("job-1"),
			LeaseID: task.LeaseID, LeaseExpiresAt: at(time.Hour + leaseFor), DueAt: at(time.Hour),
		}, task, "the manual retry's task")
	})

	t.Run("FromPhase", func(t *testing.T) {
		h := setup(t, newStore)
		c := h.failInChunking("job-1")
		got, err := h.s.RetryJob(h.ctx, "job-1", extraction, at(time.Hour))
		require.NoError(t, err)
		require.Equal(t, extraction, got.Phase)
		require.Equal(t, extraction, got.PendingPhase)
		require.Equal(t, uint32(0), got.PendingRetryCount)
		require.Equal(t, uint32(2), got.Cycle)
		task := h.claimOne(at(time.Hour), extraction)
		requireEqual(t, c.f0.Payload, task.Payload, "extraction's stored payload")
		require.Equal(t, uint32(0), task.RetryCount)
		require.Equal(t, uint32(2), task.Cycle)
	})

	// A phase counts as known when the job has a stored payload for it (a
	// hand-off's NextPayload) or an attempt of it (even without payload).
	t.Run("KnownPhases", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("handed-off", extraction, 0, at(0))
		s.NextPhase, s.NextPayload = chunking, []byte(`{"text_location":"s3://t"}`)
		h.succeed(s)
		gu := failure("handed-off", kgIngest, 0, at(time.Minute))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		_, err := h.s.RetryJob(h.ctx, "handed-off", chunking, at(time.Hour))
		require.NoError(t, err, "a phase with a stored payload and no attempt")
		task := h.claimOne(at(time.Hour), chunking)
		requireEqual(t, s.NextPayload, task.Payload, "the hand-off payload")

		np := failure("no-payload", extraction, 0, at(0))
		np.Payload = nil
		np.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(np)
		_, err = h.s.RetryJob(h.ctx, "no-payload", "", at(time.Hour))
		require.NoError(t, err, "a phase with an attempt and no payload")
		task = h.claimOne(at(time.Hour), extraction)
		require.Empty(t, task.Payload)
	})

	t.Run("Errors", func(t *testing.T) {
		h := setup(t, newStore)
		_, err := h.s.RetryJob(h.ctx, "no-such-job", "", at(time.Hour))
		requireErr(t, err, store.ErrNotFound, "RetryJob of an unknown job")

		h.schedule("scheduled", extraction, 10*time.Minute)
		h.fail(failure("leased", extraction, 0, at(0))) // due at 1m
		h.claimOne(at(time.Minute), extraction)
		h.succeed(success("completed", extraction, 0, at(0)))
		h.fail(failure("canceled", chunking, 0, at(0)))
		_, err = h.s.CancelJob(h.ctx, "canceled", "operator", at(time.Second))
		require.NoError(t, err)
		handoff := success("handed-off", extraction, 0, at(0))
		handoff.NextPhase = chunking
		h.succeed(handoff)
		gu := failure("failed", extraction, 0, at(0))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)

		for _, id := range []string{"scheduled", "leased", "completed", "canceled", "handed-off"} {
			before := h.snapshot(id)
			for _, phase := range []string{"", extraction} {
				_, err := h.s.RetryJob(h.ctx, id, phase, at(time.Hour))
				requireErr(t, err, store.ErrJobNotFailed, "RetryJob(%s, %q)", id, phase)
			}
			h.requireUnchanged(before, "a refused RetryJob")
		}
		before := h.snapshot("failed")
		for _, phase := range []string{kgIngest, chunking} {
			_, err = h.s.RetryJob(h.ctx, "failed", phase, at(time.Hour))
			requireErr(t, err, store.ErrUnknownPhase, "RetryJob from %s, which never ran", phase)
		}
		h.requireUnchanged(before, "a refused RetryJob")
	})

	// The attempt identity includes the cycle: the new cycle's retry_count 0
	// is a new attempt, and the old cycle's reports and leases are stale.
	t.Run("ReportsInTheNewCycle", func(t *testing.T) {
		h := setup(t, newStore)
		c := h.failInChunking("job-1")
		_, err := h.s.RetryJob(h.ctx, "job-1", "", at(time.Hour))
		require.NoError(t, err)
		before := h.snapshot("job-1")
		_, err = h.s.RecordFailure(h.ctx, c.f2)
		requireErr(t, err, store.ErrAttemptPending, "the old cycle's chunking #0 repeated")
		_, err = h.s.RecordFailure(h.ctx, c.f3)
		requireErr(t, err, store.ErrLeaseNotHeld, "the old cycle's chunking #1 with its old lease")
		h.requireUnchanged(before, "the old cycle's reports")

		task := h.claimOne(at(time.Hour), chunking)
		f := leasedFailure(task, at(time.Hour+time.Minute))
		res := h.fail(f)
		require.False(t, res.Duplicate, "chunking #0 of cycle 2 is a new attempt")
		res = h.fail(f)
		require.True(t, res.Duplicate, "and its repeat a duplicate")
		task = h.claimOne(f.Verdict.DueAt, chunking)
		require.Equal(t, uint32(1), task.RetryCount)
		require.Equal(t, uint32(2), task.Cycle)
		g := leasedFailure(task, f.Verdict.DueAt.Add(time.Second))
		g.Verdict = giveUp("max retries reached.")
		h.fail(g)

		j := h.job("job-1")
		require.Equal(t, store.StateFailed, j.State)
		require.Equal(t, uint32(1), j.TotalRetries)
		want := append(c.attempts(),
			failedAttempt(f, 2, c.s1.NextPayload, "worker-1", at(time.Hour)),
			failedAttempt(g, 2, c.s1.NextPayload, "worker-1", f.Verdict.DueAt))
		requireEqual(t, want, j.Attempts, "attempts of both cycles, oldest first")

		got, err := h.s.RetryJob(h.ctx, "job-1", extraction, at(2*time.Hour))
		require.NoError(t, err)
		require.Equal(t, uint32(3), got.Cycle)
	})
}

func testCancelJob(t *testing.T, newStore Factory) {
	t.Run("ScheduledJob", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		want := h.job("job-1")
		got, err := h.s.CancelJob(h.ctx, "job-1", "customer deleted the document", at(30*time.Second))
		require.NoError(t, err)
		// The reason is kept as FinalError (CancelJobRequest.reason).
		want.State, want.FinalError, want.UpdatedAt = store.StateCanceled, "customer deleted the document", at(30*time.Second)
		want.PendingPhase, want.PendingRetryCount, want.DueAt = "", 0, time.Time{}
		requireEqual(t, withoutAttempts(want), got, "CancelJob's job")
		h.requireJob(want)
		_, ok := h.nextDue(extraction)
		require.False(t, ok, "the retry is dropped")
		require.Empty(t, h.claim(at(time.Hour), 10, extraction))
	})

	t.Run("LeasedJob", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		task := h.claimOne(at(time.Minute), extraction)
		got, err := h.s.CancelJob(h.ctx, "job-1", "operator", at(70*time.Second))
		require.NoError(t, err)
		require.Equal(t, store.StateCanceled, got.State)
		require.Empty(t, got.LeaseID)
		require.Empty(t, got.WorkerID)
		require.True(t, got.LeaseExpiresAt.IsZero())
		require.Empty(t, got.PendingPhase)
		_, ok := h.nextExpiry()
		require.False(t, ok, "the lease is dropped")
		require.Empty(t, h.expired(at(time.Hour), 10), "a dropped lease is never reaped")

		before := h.snapshot("job-1")
		_, err = h.s.RecordFailure(h.ctx, leasedFailure(task, at(80*time.Second)))
		requireErr(t, err, store.ErrJobTerminal, "the worker's report after the cancel")
		_, err = h.s.ExtendLease(h.ctx, "job-1", task.LeaseID, at(time.Hour), at(80*time.Second))
		requireErr(t, err, store.ErrLeaseNotHeld, "extending a canceled job's lease")
		requireErr(t, h.s.ReturnLease(h.ctx, "job-1", task.LeaseID), store.ErrLeaseNotHeld, "returning a canceled job's lease")
		h.requireUnchanged(before, "calls after the cancel")
	})

	// Reading: canceling a failed job only changes its state, FinalError
	// (the reason) and UpdatedAt; FinalErrorType and TotalRetries still tell
	// how its last cycle ended.
	t.Run("FailedJob", func(t *testing.T) {
		h := setup(t, newStore)
		h.failInChunking("job-1")
		want := h.job("job-1")
		got, err := h.s.CancelJob(h.ctx, "job-1", "will not fix", at(time.Hour))
		require.NoError(t, err)
		want.State, want.FinalError, want.UpdatedAt = store.StateCanceled, "will not fix", at(time.Hour)
		requireEqual(t, withoutAttempts(want), got, "CancelJob's job")
		h.requireJob(want)
	})

	t.Run("CanceledJobUnchanged", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		_, err := h.s.CancelJob(h.ctx, "job-1", "first reason", at(10*time.Second))
		require.NoError(t, err)
		want := h.job("job-1")
		got, err := h.s.CancelJob(h.ctx, "job-1", "second reason", at(time.Hour))
		require.NoError(t, err)
		requireEqual(t, withoutAttempts(want), got, "canceling a canceled job returns it unchanged")
		h.requireJob(want)
	})

	t.Run("Refusals", func(t *testing.T) {
		h := setup(t, newStore)
		_, err := h.s.CancelJob(h.ctx, "no-such-job", "x", at(0))
		requireErr(t, err, store.ErrNotFound, "CancelJob of an unknown job")
		h.succeed(success("job-1", extraction, 0, at(0)))
		before := h.snapshot("job-1")
		_, err = h.s.CancelJob(h.ctx, "job-1", "x", at(time.Minute))
		requireErr(t, err, store.ErrJobTerminal, "CancelJob of a completed job")
		h.requireUnchanged(before, "a refused cancel")
	})
}

func testGetJob(t *testing.T, newStore Factory) {
	t.Run("NotFound", func(t *testing.T) {
		h := setup(t, newStore)
		_, err := h.s.GetJob(h.ctx, "no-such-job")
		requireErr(t, err, store.ErrNotFound, "GetJob of an unknown job")
	})

	// Two cycles over two phases whose names sort against the order they ran
	// in: the attempts come oldest first, with every field.
	t.Run("AttemptsOldestFirst", func(t *testing.T) {
		h := setup(t, newStore)
		c := h.failInChunking("job-1")
		_, err := h.s.RetryJob(h.ctx, "job-1", extraction, at(time.Hour))
		require.NoError(t, err)
		t4 := h.claimOne(at(time.Hour), extraction)
		s4 := leasedSuccess(t4, at(time.Hour+5*time.Second))
		s4.NextPhase = chunking
		h.succeed(s4)
		s5 := success("job-1", chunking, 0, at(time.Hour+10*time.Second))
		s5.Payload = nil
		require.Equal(t, store.StateCompleted, h.succeed(s5).State)

		h.requireJob(store.Job{
			ID: "job-1", State: store.StateCompleted, Phase: chunking, Cycle: 2, Labels: labelsOf("job-1"),
			LastFailedPhase: chunking, LastFailedRetryCount: 1, LastFailedAt: c.f3.Now,
			LastErrorType: c.f3.ErrorType, LastError: c.f3.ErrorMessage,
			CreatedAt: at(0), UpdatedAt: s5.Now,
			Attempts: append(c.attempts(),
				succeededAttempt(s4, 2, c.f0.Payload, "worker-1", at(time.Hour)),
				succeededAttempt(s5, 2, c.s1.NextPayload, "", s5.Now)),
		})
	})
}
