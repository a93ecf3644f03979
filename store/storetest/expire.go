package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

const day = 24 * time.Hour

// expire runs Expire until it has nothing more to do (a backend may stop
// early and set More) and returns the jobs it removed.
func (h *harness) expire(now time.Time) int {
	h.t.Helper()
	return h.expireAll(now).Jobs()
}

// expireAll runs Expire until More is false and sums the results.
func (h *harness) expireAll(now time.Time) store.ExpireResult {
	h.t.Helper()
	var sum store.ExpireResult
	for range 1000 {
		r, err := h.s.Expire(h.ctx, now)
		require.NoError(h.t, err, "Expire(%v)", now)
		sum.ByAge += r.ByAge
		sum.ByCount += r.ByCount
		sum.StatsHours += r.StatsHours
		if !r.More {
			return sum
		}
	}
	h.t.Fatalf("Expire(%v) still reports More after 1000 calls", now)
	return sum
}

func testExpire(t *testing.T, newStore Factory) {
	t.Run("TerminalJobsPastRetention", func(t *testing.T) {
		h := setupWith(t, newStore, Options{JobRetention: 2 * day, StatsRetention: 30 * day})
		now := at(10 * day)
		cutoff := now.Add(-2 * day)

		gu := failure("old-failed", extraction, 0, at(time.Hour))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		h.succeed(success("old-completed", extraction, 0, at(2*time.Hour)))
		h.fail(failure("old-canceled", extraction, 0, at(3*time.Hour)))
		_, err := h.s.CancelJob(h.ctx, "old-canceled", "operator", at(4*time.Hour))
		require.NoError(t, err)
		h.succeed(success("just-before", chunking, 0, cutoff.Add(-time.Microsecond)))
		// Kept: not terminal, however old; updated at the cutoff (not before
		// it); updated after it.
		h.fail(failure("old-processing", extraction, 0, at(5*time.Hour)))
		old := failure("old-leased", chunking, 0, at(6*time.Hour))
		h.fail(old)
		h.claimOne(old.Verdict.DueAt, chunking)
		h.succeed(success("at-cutoff", chunking, 0, cutoff))
		gu = failure("new-failed", extraction, 0, at(9*day))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)

		kept := []string{"new-failed", "at-cutoff", "old-leased", "old-processing"}
		before := map[string]store.Job{}
		for _, id := range kept {
			before[id] = h.job(id)
		}

		requireEqual(t, store.ExpireResult{ByAge: 4}, h.expireAll(now), "Expire removes the four terminal jobs updated before the cutoff")
		for _, id := range []string{"old-failed", "old-completed", "old-canceled", "just-before"} {
			_, err := h.s.GetJob(h.ctx, id)
			requireErr(t, err, store.ErrNotFound, "GetJob(%s) after Expire", id)
		}
		for _, id := range kept {
			h.requireJob(before[id])
		}
		require.Equal(t, kept, jobIDs(h.listAll(store.ListQuery{}, 10)))
		require.Empty(t, h.listAll(store.ListQuery{State: store.StateCompleted, Phase: extraction}, 10))
		require.Equal(t, []string{"old-processing"}, taskIDs(h.claim(now, 10, extraction)), "the schedule of kept jobs survives")
		require.Len(t, h.expired(now, 10), 1, "the lease of kept jobs survives")
		require.Equal(t, 0, h.expire(now), "a second Expire finds nothing")

		// The attempts and payloads went with the job: the id starts afresh.
		f := failure("old-failed", chunking, 0, now)
		f.Payload = nil
		h.fail(f)
		requireEqual(t, store.Job{
			ID: "old-failed", State: store.StateProcessing, Phase: chunking, Cycle: 1, Labels: f.Labels,
			PendingPhase: chunking, PendingRetryCount: 1, DueAt: f.Verdict.DueAt,
			LastFailedPhase: chunking, LastFailedAt: now, LastErrorType: f.ErrorType, LastError: f.ErrorMessage,
			CreatedAt: now, UpdatedAt: now,
			Attempts: []store.Attempt{failedAttempt(f, 1, nil, "", now)},
		}, h.job("old-failed"), "a job reported again after it expired")
		_, err = h.s.RetryJob(h.ctx, "old-failed", extraction, now)
		requireErr(t, err, store.ErrJobNotFailed, "the expired job's state is gone too")
	})

	t.Run("StatsPastRetention", func(t *testing.T) {
		h := setupWith(t, newStore, Options{JobRetention: 2 * day, StatsRetention: 5 * day})
		now := at(10 * day)
		h.report("old", extraction, 1, at(time.Hour), "give-up", "Timeout")
		h.report("older", chunking, 1, at(-3*day), "success", "")
		h.report("recent", extraction, 2, now.Add(-5*day+2*time.Hour), "success", "")
		h.report("new", extraction, 0, now.Add(-time.Hour), "give-up", "Timeout")

		requireEqual(t, store.ExpireResult{ByAge: 3, StatsHours: 2}, h.expireAll(now),
			"the three completed and failed jobs go by age; the hours of old and older go")
		requireEqual(t, []store.PhaseStats{{
			Phase: extraction, Attempts: 2, Retries: 1, SuccessfulRetries: 1, GivenUp: 1,
			FailuresByType: map[string]uint64{"Timeout": 1},
		}}, h.stats(store.StatsQuery{Since: at(-30 * day), Until: now}), "Stats after Expire")
	})

	// With zero Options the backend's defaults apply: the ones package
	// store documents.
	t.Run("DefaultRetention", func(t *testing.T) {
		h := setupWith(t, newStore, Options{})
		h.succeed(success("job-1", extraction, 1, at(0)))
		require.Equal(t, 0, h.expire(at(store.DefaultJobRetention)), "a job updated exactly one retention ago is kept")
		h.job("job-1")
		require.Equal(t, 1, h.expire(at(store.DefaultJobRetention+time.Microsecond)))
		_, err := h.s.GetJob(h.ctx, "job-1")
		requireErr(t, err, store.ErrNotFound, "GetJob after Expire")

		window := store.StatsQuery{Since: at(-time.Hour), Until: at(time.Hour)}
		want := []store.PhaseStats{{Phase: extraction, Attempts: 1, Retries: 1, SuccessfulRetries: 1}}
		h.expire(at(store.DefaultStatsRetention - 2*time.Hour))
		requireEqual(t, want, h.stats(window), "stats within the default retention")
		h.expire(at(store.DefaultStatsRetention + 2*time.Hour))
		require.Empty(t, h.stats(window), "stats past the default retention")
	})

	t.Run("CountBound", func(t *testing.T) {
		h := setupWith(t, newStore, Options{MaxTerminalJobs: 3})
		// Six terminal jobs of every terminal state and two phases, and two
		// processing jobs older than all of them.
		h.fail(failure("processing-scheduled", kgIngest, 0, at(0)))
		old := failure("processing-leased", chunking, 0, at(time.Minute))
		h.fail(old)
		h.claimOne(old.Verdict.DueAt, chunking)
		gu := failure("t1-failed", extraction, 0, at(10*time.Minute))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		h.succeed(success("t2-completed", chunking, 0, at(20*time.Minute)))
		h.fail(failure("t3-canceled", extraction, 0, at(25*time.Minute)))
		_, err := h.s.CancelJob(h.ctx, "t3-canceled", "operator", at(30*time.Minute))
		require.NoError(t, err)
		h.succeed(success("t4-completed", extraction, 0, at(40*time.Minute)))
		gu = failure("t5-failed", chunking, 0, at(50*time.Minute))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		h.succeed(success("t6-completed", chunking, 0, at(60*time.Minute)))
		// t1 is touched again: a manual retry that fails makes it the most
		// recently updated terminal job, so it is kept.
		_, err = h.s.RetryJob(h.ctx, "t1-failed", "", at(61*time.Minute))
		require.NoError(t, err)
		task := h.claimOne(at(61*time.Minute), extraction)
		require.Equal(t, "t1-failed", task.JobID)
		lf := leasedFailure(task, at(62*time.Minute))
		lf.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(lf)
		kept := []string{"t1-failed", "t6-completed", "t5-failed", "processing-leased", "processing-scheduled"}
		before := map[string]store.Job{}
		for _, id := range kept {
			before[id] = h.job(id)
		}

		requireEqual(t, store.ExpireResult{ByCount: 3}, h.expireAll(at(2*time.Hour)),
			"Expire keeps the three most recently updated terminal jobs")
		for _, id := range []string{"t2-completed", "t3-canceled", "t4-completed"} {
			_, err := h.s.GetJob(h.ctx, id)
			requireErr(t, err, store.ErrNotFound, "GetJob(%s) after Expire", id)
		}
		for _, id := range kept {
			h.requireJob(before[id])
		}
		require.Equal(t, kept, jobIDs(h.listAll(store.ListQuery{}, 10)))
		requireEqual(t, store.ExpireResult{}, h.expireAll(at(2*time.Hour)), "a second Expire finds nothing")

		// Processing jobs never count: the bound holds terminal jobs only.
		for i := range 3 {
			h.fail(failure(fmt.Sprintf("new-processing-%d", i), extraction, 0, at(3*time.Hour)))
		}
		requireEqual(t, store.ExpireResult{}, h.expireAll(at(3*time.Hour)), "processing jobs are not counted")
		h.succeed(success("t7-completed", extraction, 0, at(4*time.Hour)))
		requireEqual(t, store.ExpireResult{ByCount: 1}, h.expireAll(at(4*time.Hour)), "one over the bound")
		_, err = h.s.GetJob(h.ctx, "t5-failed")
		requireErr(t, err, store.ErrNotFound, "the least recently updated terminal job goes first")
	})

	t.Run("AgeThenCount", func(t *testing.T) {
		h := setupWith(t, newStore, Options{JobRetention: day, MaxTerminalJobs: 2})
		for i, ago := range []time.Duration{3 * day, 2 * day, 5 * time.Hour, 4 * time.Hour, 3 * time.Hour, 2 * time.Hour} {
			h.succeed(success(fmt.Sprintf("job-%d", i), extraction, 0, at(10*day-ago)))
		}
		requireEqual(t, store.ExpireResult{ByAge: 2, ByCount: 2}, h.expireAll(at(10*day)),
			"the two past the retention go by age, then the two oldest of the rest by count")
		require.Equal(t, []string{"job-5", "job-4"}, jobIDs(h.listAll(store.ListQuery{}, 10)))
	})

	t.Run("NoCountBound", func(t *testing.T) {
		h := setupWith(t, newStore, Options{MaxTerminalJobs: store.NoCountBound})
		for i := range 5 {
			h.succeed(success(fmt.Sprintf("job-%d", i), extraction, 0, at(time.Duration(i)*time.Minute)))
		}
		requireEqual(t, store.ExpireResult{}, h.expireAll(at(time.Hour)), "no count bound: only age removes jobs")
		require.Len(t, h.listAll(store.ListQuery{}, 10), 5)
	})
}
