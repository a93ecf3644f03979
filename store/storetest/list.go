package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// listAll pages through ListJobs with page size limit and returns every job.
func (h *harness) listAll(q store.ListQuery, limit int) []store.Job {
	h.t.Helper()
	q.Limit = limit
	q.Cursor = ""
	var all []store.Job
	for pages := 0; ; pages++ {
		require.Less(h.t, pages, 1000, "ListJobs(%+v) never ends", q)
		page, err := h.s.ListJobs(h.ctx, q)
		require.NoError(h.t, err, "ListJobs(%+v)", q)
		require.LessOrEqual(h.t, len(page.Jobs), limit, "ListJobs(%+v) returned more than the limit", q)
		all = append(all, page.Jobs...)
		if page.NextCursor == "" {
			return all
		}
		require.NotEqual(h.t, q.Cursor, page.NextCursor, "ListJobs(%+v) returned the cursor it was given", q)
		q.Cursor = page.NextCursor
	}
}

func jobIDs(jobs []store.Job) []string {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	return ids
}

func testListJobs(t *testing.T, newStore Factory) {
	t.Run("Filters", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("p1", extraction, 0, at(1*time.Minute))) // in backoff
		h.fail(failure("p2", chunking, 0, at(2*time.Minute)))
		h.claimOne(at(3*time.Minute), chunking) // leased, not in backoff
		handoff := success("p3", extraction, 0, at(3*time.Minute))
		handoff.NextPhase = chunking
		h.succeed(handoff) // processing, nothing pending
		gu := failure("f1", extraction, 0, at(4*time.Minute))
		gu.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(gu)
		h.succeed(success("c1", kgIngest, 0, at(5*time.Minute)))
		h.fail(failure("x1", extraction, 0, at(5*time.Minute+30*time.Second)))
		_, err := h.s.CancelJob(h.ctx, "x1", "operator", at(6*time.Minute))
		require.NoError(t, err)
		h.fail(failure("p4", chunking, 0, at(7*time.Minute))) // in backoff

		full := map[string]store.Job{}
		for _, id := range []string{"p1", "p2", "p3", "p4", "f1", "c1", "x1"} {
			full[id] = withoutAttempts(h.job(id))
		}
		for _, c := range []struct {
			q    store.ListQuery
			want []string
		}{
			{store.ListQuery{}, []string{"p4", "x1", "c1", "f1", "p3", "p2", "p1"}},
			{store.ListQuery{State: store.StateProcessing}, []string{"p4", "p3", "p2", "p1"}},
			{store.ListQuery{State: store.StateFailed}, []string{"f1"}},
			{store.ListQuery{State: store.StateCompleted}, []string{"c1"}},
			{store.ListQuery{State: store.StateCanceled}, []string{"x1"}},
			{store.ListQuery{Phase: extraction}, []string{"x1", "f1", "p1"}},
			{store.ListQuery{Phase: chunking}, []string{"p4", "p3", "p2"}},
			{store.ListQuery{Phase: kgIngest}, []string{"c1"}},
			{store.ListQuery{Phase: "unknown_phase"}, nil},
			{store.ListQuery{InBackoff: true}, []string{"p4", "p1"}},
			{store.ListQuery{InBackoff: true, Phase: chunking}, []string{"p4"}},
			{store.ListQuery{InBackoff: true, State: store.StateProcessing}, []string{"p4", "p1"}},
			{store.ListQuery{InBackoff: true, State: store.StateFailed}, nil},
			{store.ListQuery{State: store.StateProcessing, Phase: chunking}, []string{"p4", "p3", "p2"}},
		} {
			var want []store.Job
			for _, id := range c.want {
				want = append(want, full[id])
			}
			for _, limit := range []int{1, 2, 3, 100} {
				requireEqual(t, want, h.listAll(c.q, limit), "ListJobs(%+v) in pages of %d", c.q, limit)
			}
		}
	})

	// Jobs updated at the same instant still page exactly once each.
	t.Run("PaginationWithTies", func(t *testing.T) {
		h := setup(t, newStore)
		want := map[string]bool{}
		for i := range 23 {
			id := fmt.Sprintf("job-%02d", i)
			now := at(time.Minute)
			if i%8 == 0 {
				now = at(time.Duration(i) * time.Second)
			}
			h.fail(failure(id, extraction, 0, now))
			want[id] = true
		}
		for _, q := range []store.ListQuery{{}, {State: store.StateProcessing}, {InBackoff: true}, {Phase: extraction}} {
			for _, limit := range []int{1, 4, 5, 23, 50} {
				jobs := h.listAll(q, limit)
				seen := map[string]int{}
				for i, j := range jobs {
					seen[j.ID]++
					if i > 0 {
						require.False(t, j.UpdatedAt.After(jobs[i-1].UpdatedAt),
							"ListJobs(%+v) by %d: %s (updated %v) after %s (updated %v)", q, limit, j.ID, j.UpdatedAt, jobs[i-1].ID, jobs[i-1].UpdatedAt)
					}
				}
				require.Len(t, seen, len(want), "ListJobs(%+v) by %d", q, limit)
				for id, n := range seen {
					require.True(t, want[id], "unexpected job %s", id)
					require.Equal(t, 1, n, "ListJobs(%+v) by %d listed %s %d times", q, limit, id, n)
				}
			}
		}
	})

	t.Run("UpdateMovesJobToFront", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("a", extraction, 0, at(time.Minute)))
		h.fail(failure("b", extraction, 0, at(90*time.Second)))
		require.Equal(t, []string{"b", "a"}, jobIDs(h.listAll(store.ListQuery{}, 10)))
		task := h.claimOne(at(2*time.Minute), extraction)
		require.Equal(t, "a", task.JobID)
		gu := leasedFailure(task, at(3*time.Minute))
		gu.Verdict = giveUp("max retries reached.")
		h.fail(gu)
		require.Equal(t, []string{"a", "b"}, jobIDs(h.listAll(store.ListQuery{}, 10)))
		require.Equal(t, []string{"b"}, jobIDs(h.listAll(store.ListQuery{State: store.StateProcessing}, 10)))
		require.Equal(t, []string{"a"}, jobIDs(h.listAll(store.ListQuery{State: store.StateFailed}, 10)))
		_, err := h.s.RetryJob(h.ctx, "a", "", at(4*time.Minute))
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b"}, jobIDs(h.listAll(store.ListQuery{State: store.StateProcessing}, 10)))
		require.Empty(t, h.listAll(store.ListQuery{State: store.StateFailed}, 10))
	})
}
