package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

func testRecordFailure(t *testing.T, newStore Factory) {
	t.Run("CreatesJobOnFirstReport", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		res := h.fail(f)
		requireEqual(t, store.FailureResult{Verdict: f.Verdict}, res, "first report")
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateProcessing, Phase: extraction, Cycle: 1,
			Labels:       labelsOf("job-1"),
			PendingPhase: extraction, PendingRetryCount: 1, DueAt: at(time.Minute),
			LastFailedPhase: extraction, LastFailedRetryCount: 0, LastFailedAt: at(0),
			LastErrorType: f.ErrorType, LastError: f.ErrorMessage,
			CreatedAt: at(0), UpdatedAt: at(0),
			Attempts: []store.Attempt{failedAttempt(f, 1, f.Payload, "", at(0))},
		})
		due, ok := h.nextDue(extraction)
		require.True(t, ok, "the retry must be scheduled")
		require.True(t, due.Equal(at(time.Minute)), "NextDue = %v, want %v", due, at(time.Minute))
	})

	t.Run("GiveUpFailsJob", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		f1 := leasedFailure(task, at(time.Minute+10*time.Second))
		f1.ErrorType, f1.ErrorMessage, f1.HTTPStatus = "pydantic.ValidationError", "field 'title' is required", 0
		f1.Verdict = giveUp("ValidationError is not retryable.")
		res := h.fail(f1)
		requireEqual(t, store.FailureResult{Verdict: f1.Verdict}, res, "give-up report")
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateFailed, Phase: extraction, Cycle: 1,
			Labels:          labelsOf("job-1"),
			LastFailedPhase: extraction, LastFailedRetryCount: 1, LastFailedAt: f1.Now,
			LastErrorType: f1.ErrorType, LastError: f1.ErrorMessage,
			FinalError: f1.ErrorMessage, FinalErrorType: f1.ErrorType, TotalRetries: 1,
			CreatedAt: at(0), UpdatedAt: f1.Now,
			Attempts: []store.Attempt{
				failedAttempt(f0, 1, f0.Payload, "", at(0)),
				failedAttempt(f1, 1, f0.Payload, "worker-1", at(time.Minute)),
			},
		})
		_, ok := h.nextDue(extraction)
		require.False(t, ok, "a failed job has nothing scheduled")
		_, ok = h.nextExpiry()
		require.False(t, ok, "the lease must have ended")
		require.Empty(t, h.claim(at(time.Hour), 10, extraction))
	})

	t.Run("LeasedFailureSchedulesNextRetry", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		f1 := leasedFailure(task, at(time.Minute+5*time.Second))
		f1.Verdict = retryIn(2, 5*time.Minute, f1.Now)
		h.fail(f1)
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateProcessing, Phase: extraction, Cycle: 1,
			Labels:       labelsOf("job-1"),
			PendingPhase: extraction, PendingRetryCount: 2, DueAt: f1.Verdict.DueAt,
			LastFailedPhase: extraction, LastFailedRetryCount: 1, LastFailedAt: f1.Now,
			LastErrorType: f1.ErrorType, LastError: f1.ErrorMessage,
			CreatedAt: at(0), UpdatedAt: f1.Now,
			Attempts: []store.Attempt{
				failedAttempt(f0, 1, f0.Payload, "", at(0)),
				failedAttempt(f1, 1, f0.Payload, "worker-1", at(time.Minute)),
			},
		})
		_, ok := h.nextExpiry()
		require.False(t, ok, "the report must end the lease")
		require.Empty(t, h.claim(f1.Verdict.DueAt.Add(-time.Microsecond), 10, extraction), "retry 2 is not due yet")
		next := h.claimOne(f1.Verdict.DueAt, extraction)
		require.Equal(t, uint32(2), next.RetryCount)
		require.NotEqual(t, task.LeaseID, next.LeaseID, "every claim gets a new lease id")
	})

	// Reading: Attempt.StartedAt is Failure.StartedAt when set; otherwise the
	// lease's start (the claim's Now) for a leased report, else the report's Now.
	t.Run("StartedAt", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		f0.StartedAt = at(-42 * time.Second)
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		f1 := leasedFailure(task, at(2*time.Minute))
		f1.StartedAt = at(time.Minute + 3*time.Second)
		h.fail(f1)
		task = h.claimOne(at(3*time.Minute), extraction)
		f2 := leasedFailure(task, at(4*time.Minute))
		h.fail(f2)
		attempts := h.job("job-1").Attempts
		require.Len(t, attempts, 3)
		for i, want := range []time.Time{at(-42 * time.Second), at(time.Minute + 3*time.Second), at(3 * time.Minute)} {
			require.True(t, attempts[i].StartedAt.Equal(want), "attempt %d StartedAt = %v, want %v", i, attempts[i].StartedAt, want)
		}
	})

	// A nil Payload or Labels keeps what is stored; a non-nil one, even
	// empty, replaces it.
	//
	// Reading: Attempt.Payload is the payload the attempt ran with — the
	// report's, or when the report carries none, the phase's stored payload
	// (what its Dispatch task carried) — so that the history shows the
	// arguments of every attempt.
	t.Run("LabelsAndPayload", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		requireEqual(t, f0.Payload, task.Payload, "task payload")
		requireEqual(t, f0.Labels, task.Labels, "task labels")

		f1 := leasedFailure(task, at(2*time.Minute)) // nil payload and labels
		h.fail(f1)
		j := h.job("job-1")
		requireEqual(t, f0.Labels, j.Labels, "labels after a report without labels")
		requireEqual(t, f0.Payload, j.Attempts[1].Payload, "payload of an attempt reported without payload")

		task = h.claimOne(at(3*time.Minute), extraction)
		requireEqual(t, f0.Payload, task.Payload, "task payload")
		f2 := leasedFailure(task, at(4*time.Minute))
		f2.Payload = []byte(`{"source_location":"s3://docs/moved"}`)
		f2.Labels = map[string]string{"document_id": "doc-9"}
		h.fail(f2)
		j = h.job("job-1")
		requireEqual(t, f2.Labels, j.Labels, "labels after a report with labels")
		requireEqual(t, f2.Payload, j.Attempts[2].Payload, "attempt payload")

		task = h.claimOne(at(5*time.Minute), extraction)
		requireEqual(t, f2.Payload, task.Payload, "task payload after a report with payload")
		requireEqual(t, f2.Labels, task.Labels, "task labels after a report with labels")
		f3 := leasedFailure(task, at(6*time.Minute))
		f3.Payload = []byte{}
		f3.Labels = map[string]string{}
		h.fail(f3)
		j = h.job("job-1")
		require.Empty(t, j.Labels, "an empty, non-nil Labels replaces the labels")
		require.Empty(t, j.Attempts[3].Payload, "an empty, non-nil Payload replaces the payload")
		task = h.claimOne(at(7*time.Minute), extraction)
		require.Empty(t, task.Payload, "task payload after an empty payload")
	})

	t.Run("RetryDueBeforeNow", func(t *testing.T) {
		// A verdict may schedule in the past (a zero delay): it is due at once.
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		f.Verdict = retryIn(1, -time.Second, at(0))
		h.fail(f)
		task := h.claimOne(at(0), extraction)
		require.True(t, task.DueAt.Equal(at(-time.Second)), "DueAt = %v", task.DueAt)
	})
}

func testRecordSuccess(t *testing.T, newStore Factory) {
	t.Run("CreatesCompletedJob", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("job-1", extraction, 0, at(0))
		res := h.succeed(s)
		requireEqual(t, store.SuccessResult{State: store.StateCompleted}, res, "first report")
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateCompleted, Phase: extraction, Cycle: 1,
			Labels:    labelsOf("job-1"),
			CreatedAt: at(0), UpdatedAt: at(0),
			Attempts: []store.Attempt{succeededAttempt(s, 1, s.Payload, "", at(0))},
		})
	})

	t.Run("NextPhaseMovesJob", func(t *testing.T) {
		h := setup(t, newStore)
		s0 := success("job-1", extraction, 0, at(0))
		s0.NextPhase = chunking
		s0.NextPayload = payloadOf("job-1", chunking)
		res := h.succeed(s0)
		requireEqual(t, store.SuccessResult{State: store.StateProcessing}, res, "hand-off")
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateProcessing, Phase: chunking, Cycle: 1,
			Labels:    labelsOf("job-1"),
			CreatedAt: at(0), UpdatedAt: at(0),
			Attempts: []store.Attempt{succeededAttempt(s0, 1, s0.Payload, "", at(0))},
		})

		// The next phase runs outside retryd; its failure reported without a
		// payload runs with the payload the hand-off stored.
		f := failure("job-1", chunking, 0, at(10*time.Second))
		f.Payload = nil
		h.fail(f)
		j := h.job("job-1")
		requireEqual(t, s0.NextPayload, j.Attempts[1].Payload, "payload of the next phase's first attempt")
		task := h.claimOne(f.Verdict.DueAt, chunking)
		requireEqual(t, s0.NextPayload, task.Payload, "payload of the next phase's retry")

		// A hand-off without NextPayload keeps what is stored for that phase.
		s1 := leasedSuccess(task, f.Verdict.DueAt.Add(time.Second))
		s1.NextPhase = kgIngest
		res = h.succeed(s1)
		requireEqual(t, store.SuccessResult{State: store.StateProcessing}, res, "second hand-off")
		j = h.job("job-1")
		require.Equal(t, kgIngest, j.Phase)
		require.Equal(t, store.StateProcessing, j.State)
		require.Empty(t, j.PendingPhase)
		requireEqual(t, succeededAttempt(s1, 1, s0.NextPayload, "worker-1", f.Verdict.DueAt), j.Attempts[2], "hand-off attempt")
	})

	t.Run("LeasedSuccessCompletes", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		s := leasedSuccess(task, at(time.Minute+20*time.Second))
		res := h.succeed(s)
		requireEqual(t, store.SuccessResult{State: store.StateCompleted}, res, "leased success")
		// A success leaves the record of the last failure alone, and
		// TotalRetries is only written when retryd gives up.
		h.requireJob(store.Job{
			ID: "job-1", State: store.StateCompleted, Phase: extraction, Cycle: 1,
			Labels:          labelsOf("job-1"),
			LastFailedPhase: extraction, LastFailedRetryCount: 0, LastFailedAt: at(0),
			LastErrorType: f0.ErrorType, LastError: f0.ErrorMessage,
			CreatedAt: at(0), UpdatedAt: s.Now,
			Attempts: []store.Attempt{
				failedAttempt(f0, 1, f0.Payload, "", at(0)),
				succeededAttempt(s, 1, f0.Payload, "worker-1", at(time.Minute)),
			},
		})
		_, ok := h.nextExpiry()
		require.False(t, ok, "the success must end the lease")
		require.Empty(t, h.expired(at(time.Hour), 10), "no lease is left to reap")
	})
}

// testCheckOrder holds the package doc's checks 1–5 to their order: each case
// builds a report that several checks would refuse and expects the first.
func testCheckOrder(t *testing.T, newStore Factory) {
	t.Run("1_AbsentJobWithLease", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 1, at(0))
		f.LeaseID = "lease-from-nowhere"
		_, err := h.s.RecordFailure(h.ctx, f)
		requireErr(t, err, store.ErrLeaseNotHeld, "failure with a lease for an unknown job")
		f.LeaseExpired = true
		_, err = h.s.RecordFailure(h.ctx, f)
		requireErr(t, err, store.ErrLeaseNotHeld, "reaper report for an unknown job")
		s := success("job-1", extraction, 1, at(0))
		s.LeaseID = "lease-from-nowhere"
		_, err = h.s.RecordSuccess(h.ctx, s)
		requireErr(t, err, store.ErrLeaseNotHeld, "success with a lease for an unknown job")
		_, err = h.s.GetJob(h.ctx, "job-1")
		requireErr(t, err, store.ErrNotFound, "a refused report must not create the job")
		_, ok := h.nextDue(extraction)
		require.False(t, ok)
	})

	t.Run("2_DuplicateBeforeTerminal", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		f.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(f)
		before := h.snapshot("job-1")
		again := f
		again.Now = at(time.Minute)
		res, err := h.s.RecordFailure(h.ctx, again)
		require.NoError(t, err, "a duplicate of the give-up report is not refused as terminal")
		requireEqual(t, store.FailureResult{Verdict: f.Verdict, Duplicate: true}, res, "duplicate")
		_, err = h.s.RecordSuccess(h.ctx, success("job-1", extraction, 0, at(time.Minute)))
		requireErr(t, err, store.ErrConflict, "success of an attempt recorded as failed, on a failed job")
		h.requireUnchanged(before, "duplicate and conflicting reports on a failed job")
	})

	t.Run("2_DuplicateBeforeTerminalCompleted", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("job-1", extraction, 0, at(0))
		h.succeed(s)
		before := h.snapshot("job-1")
		res, err := h.s.RecordSuccess(h.ctx, s)
		require.NoError(t, err, "a duplicate success on a completed job is not refused as terminal")
		requireEqual(t, store.SuccessResult{State: store.StateCompleted, Duplicate: true}, res, "duplicate")
		_, err = h.s.RecordFailure(h.ctx, failure("job-1", extraction, 0, at(time.Minute)))
		requireErr(t, err, store.ErrConflict, "failure of an attempt recorded as succeeded, on a completed job")
		h.requireUnchanged(before, "duplicate and conflicting reports on a completed job")
	})

	t.Run("2_DuplicateBeforeLease", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		f := leasedFailure(task, at(time.Minute+time.Second))
		h.fail(f)
		before := h.snapshot("job-1")
		// The lease ended with the first report, and a bogus one never held:
		// the duplicate check comes first either way.
		for _, lease := range []string{task.LeaseID, "bogus-lease"} {
			again := f
			again.LeaseID = lease
			res, err := h.s.RecordFailure(h.ctx, again)
			require.NoError(t, err, "duplicate with lease %q", lease)
			requireEqual(t, store.FailureResult{Verdict: f.Verdict, Duplicate: true}, res, "duplicate with lease %q", lease)
			s := leasedSuccess(task, at(2*time.Minute))
			s.LeaseID = lease
			_, err = h.s.RecordSuccess(h.ctx, s)
			requireErr(t, err, store.ErrConflict, "conflicting success with lease %q", lease)
		}
		h.requireUnchanged(before, "duplicates naming ended or bogus leases")
	})

	t.Run("2_DuplicateBeforePending", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		h.fail(f) // schedules retry 1: the job now has a pending attempt
		before := h.snapshot("job-1")
		res, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err, "a duplicate is answered even while a retry is pending")
		require.True(t, res.Duplicate)
		_, err = h.s.RecordSuccess(h.ctx, success("job-1", extraction, 0, at(time.Second)))
		requireErr(t, err, store.ErrConflict, "conflict while a retry is pending")
		h.requireUnchanged(before, "duplicate while pending")
	})

	t.Run("3_TerminalBeforeLease", func(t *testing.T) {
		h := setup(t, newStore)
		// completed
		h.succeed(success("done", extraction, 0, at(0)))
		// failed
		gu := failure("failed", extraction, 0, at(0))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		// canceled while leased
		h.fail(failure("canceled", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		_, err := h.s.CancelJob(h.ctx, "canceled", "operator", at(time.Minute+time.Second))
		require.NoError(t, err)

		for _, id := range []string{"done", "failed", "canceled"} {
			before := h.snapshot(id)
			for _, lease := range []string{"", "bogus-lease", task.LeaseID} {
				f := failure(id, extraction, 1, at(2*time.Minute))
				f.LeaseID = lease
				_, err := h.s.RecordFailure(h.ctx, f)
				requireErr(t, err, store.ErrJobTerminal, "new failed attempt of %s job with lease %q", id, lease)
				f.LeaseExpired = lease != ""
				_, err = h.s.RecordFailure(h.ctx, f)
				requireErr(t, err, store.ErrJobTerminal, "reaper report on %s job with lease %q", id, lease)
				s := success(id, extraction, 1, at(2*time.Minute))
				s.LeaseID = lease
				_, err = h.s.RecordSuccess(h.ctx, s)
				requireErr(t, err, store.ErrJobTerminal, "new succeeded attempt of %s job with lease %q", id, lease)
			}
			h.requireUnchanged(before, "reports on a terminal job")
		}
	})

	t.Run("4_LeaseBeforeActive", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		before := h.snapshot("job-1")
		f := leasedFailure(task, at(time.Minute+time.Second)) // lease still active
		f.LeaseID = "bogus-lease"
		f.LeaseExpired = true
		_, err := h.s.RecordFailure(h.ctx, f)
		requireErr(t, err, store.ErrLeaseNotHeld, "reaper report naming a lease that is not held")
		require.NotErrorIs(t, err, store.ErrLeaseActive)
		h.requireUnchanged(before, "refused reaper report")
	})

	t.Run("4_LeaseBeforePending", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0))) // retry 1 scheduled, not leased
		before := h.snapshot("job-1")
		f := failure("job-1", extraction, 1, at(time.Minute))
		f.LeaseID = "bogus-lease"
		_, err := h.s.RecordFailure(h.ctx, f)
		requireErr(t, err, store.ErrLeaseNotHeld, "leased report for a scheduled, unleased attempt")
		s := success("job-1", extraction, 1, at(time.Minute))
		s.LeaseID = "bogus-lease"
		_, err = h.s.RecordSuccess(h.ctx, s)
		requireErr(t, err, store.ErrLeaseNotHeld, "leased success for a scheduled, unleased attempt")
		h.requireUnchanged(before, "refused leased reports")
	})

	t.Run("5_UnleasedWhilePending", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		check := func(what string) {
			t.Helper()
			before := h.snapshot("job-1")
			for _, phase := range []string{extraction, chunking} {
				for _, rc := range []uint32{1, 2} {
					_, err := h.s.RecordFailure(h.ctx, failure("job-1", phase, rc, at(2*time.Minute)))
					requireErr(t, err, store.ErrAttemptPending, "unleased failure of %s #%d while %s", phase, rc, what)
					_, err = h.s.RecordSuccess(h.ctx, success("job-1", phase, rc, at(2*time.Minute)))
					requireErr(t, err, store.ErrAttemptPending, "unleased success of %s #%d while %s", phase, rc, what)
				}
			}
			h.requireUnchanged(before, "unleased reports while "+what)
		}
		check("a retry is scheduled")
		h.claimOne(at(time.Minute), extraction)
		check("a retry is leased")
	})

	// 6. An unleased failure reported after a later attempt of its phase
	// (a worker that runs its own retries, whose report of #0 arrives after
	// its #2 succeeded and handed the job on to the same phase) must not
	// schedule a retry: the retries would come round to #2, already
	// recorded, whose report could never be accepted and whose lease would
	// never end. It is refused and changes nothing; a give-up verdict
	// schedules nothing and is recorded.
	t.Run("6_UnleasedFailureAfterLaterAttempt", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("job-1", extraction, 2, at(0))
		s.NextPhase = extraction
		h.succeed(s)
		before := h.snapshot("job-1")
		for _, rc := range []uint32{0, 1} {
			_, err := h.s.RecordFailure(h.ctx, failure("job-1", extraction, rc, at(time.Minute)))
			requireErr(t, err, store.ErrConflict, "failure of #%d after #2", rc)
		}
		h.requireUnchanged(before, "failures reported out of order")
		// A later attempt is in order: its retry is scheduled and runs.
		h.fail(failure("job-1", extraction, 3, at(2*time.Minute)))
		task := h.claimOne(at(time.Hour), extraction)
		require.Equal(t, uint32(4), task.RetryCount)
		h.succeed(leasedSuccess(task, at(time.Hour)))
		require.Equal(t, store.StateCompleted, h.job("job-1").State)

		// A give-up schedules nothing: recorded.
		s = success("job-3", extraction, 2, at(0))
		s.NextPhase = extraction
		h.succeed(s)
		f := failure("job-3", extraction, 0, at(time.Minute))
		f.Verdict = giveUp("not retryable.")
		h.fail(f)
		require.Equal(t, store.StateFailed, h.job("job-3").State)
	})
}

func testIdempotency(t *testing.T, newStore Factory) {
	t.Run("DuplicateFailureChangesNothing", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		h.fail(f)
		before := h.snapshot("job-1")
		// The repeat differs in everything but the attempt's identity: the
		// stored verdict is returned and nothing else is looked at.
		again := f
		again.Now = at(5 * time.Second)
		again.ErrorMessage = "a different message"
		again.ErrorType = "Timeout"
		again.Payload = []byte(`{"other":true}`)
		again.Labels = map[string]string{"other": "labels"}
		again.Verdict = giveUp("different verdict")
		res, err := h.s.RecordFailure(h.ctx, again)
		require.NoError(t, err)
		requireEqual(t, store.FailureResult{Verdict: f.Verdict, Duplicate: true}, res, "duplicate report")
		h.requireUnchanged(before, "a duplicate report")
	})

	// Reading: the duplicate's SuccessResult is the first answer, even when
	// the job has moved on since: a client that repeats a request gets the
	// response it missed.
	t.Run("DuplicateSuccessReturnsFirstResult", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("job-1", extraction, 0, at(0))
		s.NextPhase = chunking
		h.succeed(s)
		gu := failure("job-1", chunking, 0, at(time.Minute))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		before := h.snapshot("job-1")
		again := s
		again.Now = at(2 * time.Minute)
		again.NextPhase = ""
		res, err := h.s.RecordSuccess(h.ctx, again)
		require.NoError(t, err)
		requireEqual(t, store.SuccessResult{State: store.StateProcessing, Duplicate: true}, res, "duplicate success")
		h.requireUnchanged(before, "a duplicate success")
	})

	t.Run("FailureThenSuccessConflict", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		before := h.snapshot("job-1")
		_, err := h.s.RecordSuccess(h.ctx, success("job-1", extraction, 0, at(time.Second)))
		requireErr(t, err, store.ErrConflict, "success of a failed attempt")
		h.requireUnchanged(before, "a conflicting success")
	})

	t.Run("SuccessThenFailureConflict", func(t *testing.T) {
		h := setup(t, newStore)
		s := success("job-1", extraction, 0, at(0))
		s.NextPhase = chunking
		h.succeed(s)
		before := h.snapshot("job-1")
		_, err := h.s.RecordFailure(h.ctx, failure("job-1", extraction, 0, at(time.Second)))
		requireErr(t, err, store.ErrConflict, "failure of a succeeded attempt")
		h.requireUnchanged(before, "a conflicting failure")
	})

	t.Run("ConcurrentDuplicateFailures", func(t *testing.T) {
		h := setup(t, newStore)
		results := concurrently(t, 20, func(i int) (store.FailureResult, error) {
			f := failure("job-1", extraction, 0, at(0))
			// Each repeat carries its own verdict, so the answers show
			// whose verdict was kept.
			f.Verdict = retryIn(1, time.Minute+time.Duration(i)*time.Millisecond, at(0))
			return h.s.RecordFailure(h.ctx, f)
		})
		requireOneWinner(t, results)
		j := h.job("job-1")
		require.Len(t, j.Attempts, 1, "20 repeats of one attempt record it once")
		require.True(t, j.DueAt.Equal(results[0].Verdict.DueAt), "the job is scheduled by the kept verdict")
		tasks := h.claim(at(time.Hour), 100, extraction)
		require.Len(t, tasks, 1, "exactly one retry is scheduled")
		requireEqual(t, []store.PhaseStats{{Phase: extraction, Attempts: 1, FailuresByType: map[string]uint64{"requests.exceptions.ConnectionError": 1}}},
			h.stats(store.StatsQuery{Since: at(0), Until: at(time.Hour)}), "stats count the attempt once")
	})

	t.Run("ConcurrentDuplicateLeasedFailures", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		results := concurrently(t, 20, func(i int) (store.FailureResult, error) {
			f := leasedFailure(task, at(2*time.Minute))
			f.Verdict = retryIn(2, 5*time.Minute+time.Duration(i)*time.Millisecond, f.Now)
			return h.s.RecordFailure(h.ctx, f)
		})
		requireOneWinner(t, results)
		require.Len(t, h.job("job-1").Attempts, 2)
		require.Len(t, h.claim(at(time.Hour), 100, extraction), 1, "exactly one retry is scheduled")
	})
}

// concurrently runs fn n times at once and returns the results in index
// order; any error fails the test.
func concurrently(t *testing.T, n int, fn func(i int) (store.FailureResult, error)) []store.FailureResult {
	t.Helper()
	results := make([]store.FailureResult, n)
	errs := make([]error, n)
	start := make(chan struct{})
	done := make(chan struct{})
	for i := range n {
		go func() {
			defer func() { done <- struct{}{} }()
			<-start
			results[i], errs[i] = fn(i)
		}()
	}
	close(start)
	for range n {
		<-done
	}
	for i, err := range errs {
		require.NoError(t, err, "concurrent report %d", i)
	}
	return results
}

// requireOneWinner checks that exactly one of concurrent repeats was applied
// and that every repeat got the applied verdict.
func requireOneWinner(t *testing.T, results []store.FailureResult) {
	t.Helper()
	winners := 0
	for _, r := range results {
		if !r.Duplicate {
			winners++
		}
	}
	require.Equal(t, 1, winners, "exactly one concurrent repeat applies, the others are duplicates")
	for i, r := range results {
		requireEqual(t, results[0].Verdict, r.Verdict, "verdict returned to repeat %d", i)
	}
}

func testLeases(t *testing.T, newStore Factory) {
	// Every report below names a lease that is not the job's current lease
	// for that phase and retry_count: each is refused and changes nothing.
	t.Run("StaleLeasesRefused", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		h.fail(failure("job-2", extraction, 0, at(0)))
		tasks := h.claim(at(time.Minute), 10, extraction)
		require.Len(t, tasks, 2)
		t1, t2 := tasks[0], tasks[1]
		if t1.JobID != "job-1" {
			t1, t2 = t2, t1
		}

		refused := func(what string, jobID, phase string, rc uint32, lease string) {
			t.Helper()
			before := h.snapshot(jobID)
			f := failure(jobID, phase, rc, at(90*time.Second))
			f.LeaseID = lease
			_, err := h.s.RecordFailure(h.ctx, f)
			requireErr(t, err, store.ErrLeaseNotHeld, "failure with %s", what)
			s := success(jobID, phase, rc, at(90*time.Second))
			s.LeaseID = lease
			_, err = h.s.RecordSuccess(h.ctx, s)
			requireErr(t, err, store.ErrLeaseNotHeld, "success with %s", what)
			h.requireUnchanged(before, "reports with "+what)
		}
		refused("an unknown lease", "job-1", extraction, 1, "no-such-lease")
		refused("another job's lease", "job-1", extraction, 1, t2.LeaseID)
		refused("the lease of another retry_count", "job-1", extraction, 2, t1.LeaseID)
		refused("the lease of another phase", "job-1", chunking, 1, t1.LeaseID)

		// A returned lease is dead, and so is its successor's predecessor.
		require.NoError(t, h.s.ReturnLease(h.ctx, "job-1", t1.LeaseID))
		t1b := h.claimOne(at(2*time.Minute), extraction)
		refused("a returned lease", "job-1", extraction, 1, t1.LeaseID)
		h.fail(leasedFailure(t1b, at(3*time.Minute)))
		t1c := h.claimOne(at(4*time.Minute), extraction)
		require.Equal(t, uint32(2), t1c.RetryCount)
		refused("the previous attempt's lease", "job-1", extraction, 2, t1b.LeaseID)
	})

	// A report with the right lease after the lease expired but before the
	// reaper recorded it wins; the reaper's report then is a duplicate (same
	// outcome) or a conflict (the worker succeeded).
	t.Run("LateReportBeatsReaper", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("fails", extraction, 0, at(0)))
		h.fail(failure("succeeds", extraction, 0, at(0)))
		tasks := h.claim(at(time.Minute), 10, extraction)
		require.Len(t, tasks, 2)
		byJob := map[string]store.Task{tasks[0].JobID: tasks[0], tasks[1].JobID: tasks[1]}
		late := at(time.Minute + leaseFor + 15*time.Second)
		require.Len(t, h.expired(late, 10), 2, "both leases have expired")

		f := leasedFailure(byJob["fails"], late)
		res := h.fail(f)
		require.False(t, res.Duplicate, "the worker's late report is applied")
		sres := h.succeed(leasedSuccess(byJob["succeeds"], late))
		require.False(t, sres.Duplicate)
		require.Empty(t, h.expired(late, 10), "reported leases are no longer expired leases")

		reaper := leasedFailure(byJob["fails"], late.Add(time.Second))
		reaper.LeaseExpired = true
		reaper.ErrorType, reaper.ErrorMessage = "LeaseExpired", "lease expired"
		reaper.Verdict = retryIn(2, time.Hour, reaper.Now)
		before := h.snapshot("fails")
		res, err := h.s.RecordFailure(h.ctx, reaper)
		require.NoError(t, err)
		requireEqual(t, store.FailureResult{Verdict: f.Verdict, Duplicate: true}, res, "reaper after the worker's failure")
		h.requireUnchanged(before, "the reaper's duplicate")

		reaper = leasedFailure(byJob["succeeds"], late.Add(time.Second))
		reaper.LeaseExpired = true
		before = h.snapshot("succeeds")
		_, err = h.s.RecordFailure(h.ctx, reaper)
		requireErr(t, err, store.ErrConflict, "reaper after the worker's success")
		h.requireUnchanged(before, "the reaper's conflict")
	})
}
