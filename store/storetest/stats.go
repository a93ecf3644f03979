package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// report records one attempt of a fresh job: a success, or a failure with a
// give-up or retry verdict. The first report of a job may carry any
// retry_count, which lets the stats scenarios place attempts freely.
func (h *harness) report(jobID, phase string, rc uint32, now time.Time, outcome, errorType string) {
	h.t.Helper()
	switch outcome {
	case "success":
		h.succeed(success(jobID, phase, rc, now))
	case "retry", "give-up":
		f := failure(jobID, phase, rc, now)
		f.ErrorType = errorType
		if outcome == "give-up" {
			f.Verdict = giveUp(errorType + " is not retryable.")
		}
		h.fail(f)
	default:
		h.t.Fatalf("unknown outcome %q", outcome)
	}
}

func testStats(t *testing.T, newStore Factory) {
	// Base is 09:00. The attempts, by hour:
	//   08:30 A extraction #0 failed ConnectionError (retried)
	//   09:10 B extraction #1 failed Timeout (given up)
	//   09:20 C extraction #2 succeeded
	//   09:30 D extraction #0 succeeded
	//   09:40 E chunking #1 failed ConnectionError (retried)
	//   09:50 F chunking #3 succeeded
	//   10:05 G extraction #1 failed ConnectionError (given up)
	//   11:00 H extraction #0 failed Timeout (retried)
	seed := func(h *harness) {
		h.report("A", extraction, 0, at(-30*time.Minute), "retry", "ConnectionError")
		h.report("B", extraction, 1, at(10*time.Minute), "give-up", "Timeout")
		h.report("C", extraction, 2, at(20*time.Minute), "success", "")
		h.report("D", extraction, 0, at(30*time.Minute), "success", "")
		h.report("E", chunking, 1, at(40*time.Minute), "retry", "ConnectionError")
		h.report("F", chunking, 3, at(50*time.Minute), "success", "")
		h.report("G", extraction, 1, at(65*time.Minute), "give-up", "ConnectionError")
		h.report("H", extraction, 0, at(2*time.Hour), "retry", "Timeout")
	}
	nineToEleven := []store.PhaseStats{
		{Phase: chunking, Attempts: 2, Retries: 2, SuccessfulRetries: 1, FailuresByType: map[string]uint64{"ConnectionError": 1}},
		{Phase: extraction, Attempts: 4, Retries: 3, SuccessfulRetries: 1, GivenUp: 2, FailuresByType: map[string]uint64{"Timeout": 1, "ConnectionError": 1}},
	}

	t.Run("Window", func(t *testing.T) {
		h := setup(t, newStore)
		seed(h)
		for _, c := range []struct {
			what string
			q    store.StatsQuery
			want []store.PhaseStats
		}{
			{"09:00 to 11:00", store.StatsQuery{Since: at(0), Until: at(2 * time.Hour)}, nineToEleven},
			{"Since is rounded down to the hour", store.StatsQuery{Since: at(45 * time.Minute), Until: at(2 * time.Hour)}, nineToEleven},
			// Reading: an hour counts when it starts in [floor(Since), Until):
			// the current, unfinished hour is part of a window ending now.
			{"Until inside an hour includes that hour", store.StatsQuery{Since: at(0), Until: at(90 * time.Minute)}, nineToEleven},
			{"Until on the hour excludes that hour", store.StatsQuery{Since: at(0), Until: at(time.Hour)}, []store.PhaseStats{
				{Phase: chunking, Attempts: 2, Retries: 2, SuccessfulRetries: 1, FailuresByType: map[string]uint64{"ConnectionError": 1}},
				{Phase: extraction, Attempts: 3, Retries: 2, SuccessfulRetries: 1, GivenUp: 1, FailuresByType: map[string]uint64{"Timeout": 1}},
			}},
			{"everything", store.StatsQuery{Since: at(-24 * time.Hour), Until: at(24 * time.Hour)}, []store.PhaseStats{
				{Phase: chunking, Attempts: 2, Retries: 2, SuccessfulRetries: 1, FailuresByType: map[string]uint64{"ConnectionError": 1}},
				{Phase: extraction, Attempts: 6, Retries: 3, SuccessfulRetries: 1, GivenUp: 2, FailuresByType: map[string]uint64{"Timeout": 2, "ConnectionError": 2}},
			}},
			{"one phase", store.StatsQuery{Since: at(-24 * time.Hour), Until: at(24 * time.Hour), Phase: chunking}, []store.PhaseStats{
				{Phase: chunking, Attempts: 2, Retries: 2, SuccessfulRetries: 1, FailuresByType: map[string]uint64{"ConnectionError": 1}},
			}},
			{"a phase without attempts", store.StatsQuery{Since: at(-24 * time.Hour), Until: at(24 * time.Hour), Phase: kgIngest}, nil},
			{"an empty window", store.StatsQuery{Since: at(3 * time.Hour), Until: at(24 * time.Hour)}, nil},
			{"before everything", store.StatsQuery{Since: at(-24 * time.Hour), Until: at(-time.Hour)}, nil},
		} {
			requireEqual(t, c.want, h.stats(c.q), "Stats: %s", c.what)
		}
	})

	t.Run("LeasedAndReaped", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		r := leasedFailure(task, task.LeaseExpiresAt)
		r.LeaseExpired, r.ErrorType = true, "LeaseExpired"
		h.fail(r)
		task = h.claimOne(r.Verdict.DueAt, extraction)
		h.succeed(leasedSuccess(task, r.Verdict.DueAt.Add(time.Second)))
		requireEqual(t, []store.PhaseStats{{
			Phase: extraction, Attempts: 3, Retries: 2, SuccessfulRetries: 1,
			FailuresByType: map[string]uint64{"requests.exceptions.ConnectionError": 1, "LeaseExpired": 1},
		}}, h.stats(store.StatsQuery{Since: at(0), Until: at(time.Hour)}), "Stats")
	})

	// A worker whose error types never repeat (an id in the class name)
	// grows the counters by at most store.MaxStatsErrorTypes types per
	// phase and hour; further types count as store.OtherErrorType, types
	// already counted keep their own counter, and another phase or hour
	// has its own bound.
	t.Run("ErrorTypesBounded", func(t *testing.T) {
		h := setup(t, newStore)
		const extra = 3
		want := store.PhaseStats{Phase: extraction, FailuresByType: map[string]uint64{}}
		for i := range store.MaxStatsErrorTypes + extra {
			typ := fmt.Sprintf("Error%03d", i)
			outcome := "retry"
			if i%2 == 1 {
				outcome = "give-up"
				want.GivenUp++
			}
			h.report(fmt.Sprintf("a-%d", i), extraction, 0, at(time.Duration(i)*time.Second), outcome, typ)
			want.Attempts++
			if i < store.MaxStatsErrorTypes {
				want.FailuresByType[typ]++
			} else {
				want.FailuresByType[store.OtherErrorType]++
			}
		}
		// A type counted before the bound was reached keeps its counter,
		// in either outcome; "other" itself is no new type.
		h.report("b-1", extraction, 0, at(20*time.Minute), "give-up", "Error000")
		h.report("b-2", extraction, 0, at(21*time.Minute), "retry", store.OtherErrorType)
		want.Attempts += 2
		want.GivenUp++
		want.FailuresByType["Error000"]++
		want.FailuresByType[store.OtherErrorType]++
		// Another phase, and the next hour, count their own types.
		h.report("c-1", chunking, 0, at(30*time.Minute), "retry", "Error999")
		h.report("d-1", extraction, 0, at(time.Hour+time.Minute), "retry", "Error999")
		want.Attempts++
		want.FailuresByType["Error999"]++
		requireEqual(t, []store.PhaseStats{
			{Phase: chunking, Attempts: 1, FailuresByType: map[string]uint64{"Error999": 1}},
			want,
		}, h.stats(store.StatsQuery{Since: at(0), Until: at(2 * time.Hour)}), "Stats")
	})

	t.Run("RefusedReportsNotCounted", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		h.fail(f)
		h.fail(f) // duplicate
		_, err := h.s.RecordSuccess(h.ctx, success("job-1", extraction, 0, at(time.Second)))
		require.ErrorIs(t, err, store.ErrConflict)
		_, err = h.s.RecordFailure(h.ctx, failure("job-1", extraction, 1, at(time.Second)))
		require.ErrorIs(t, err, store.ErrAttemptPending)
		requireEqual(t, []store.PhaseStats{{
			Phase: extraction, Attempts: 1, FailuresByType: map[string]uint64{"requests.exceptions.ConnectionError": 1},
		}}, h.stats(store.StatsQuery{Since: at(0), Until: at(time.Hour)}), "Stats")
	})
}
