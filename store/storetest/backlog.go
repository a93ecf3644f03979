package storetest

import (
	"testing"
	"time"

	"github.com/retryd/retryd/store"
)

// testBacklog: every backend counts scheduled, unleased attempts per phase
// and finds the earliest due time of each (the retryd_backlog and
// retryd_backlog_overdue_seconds metrics), and refuses a ListJobs cursor it did not make
// with ErrInvalidArgument.
func testBacklog(t *testing.T, newStore Factory) {
	t.Run("CountsScheduledNotLeased", func(t *testing.T) {
		h := setup(t, newStore)
		bc, ok := h.s.(store.BacklogCounter)
		if !ok {
			t.Fatalf("%T does not implement store.BacklogCounter", h.s)
		}
		counts, err := bc.Backlog(h.ctx)
		requireErr(t, err, nil, "Backlog of an empty store")
		requireEqual(t, map[string]store.PhaseBacklog{}, withoutZeros(counts), "empty store")
		// Due a minute after each report: b's retry is the earliest,
		// though reported after a's.
		h.fail(failure("a", "extraction", 0, at(2*time.Second)))
		h.fail(failure("b", "extraction", 0, Base))
		h.fail(failure("c", "chunking", 0, Base))
		h.claimOne(at(time.Hour), "chunking")
		counts, err = bc.Backlog(h.ctx)
		requireErr(t, err, nil, "Backlog")
		requireEqual(t, map[string]store.PhaseBacklog{"extraction": {Scheduled: 2, OldestDue: at(time.Minute)}},
			withoutZeros(counts), "a leased attempt is not backlog")
	})
	t.Run("BadCursor", func(t *testing.T) {
		h := setup(t, newStore)
		for _, c := range []string{"not a cursor!", "AAAA", "\x00\xff"} {
			_, err := h.s.ListJobs(h.ctx, store.ListQuery{Cursor: c, Limit: 10})
			requireErr(t, err, store.ErrInvalidArgument, "ListJobs with cursor %q", c)
		}
	})
}

// withoutZeros drops the phases with nothing scheduled (a store may list
// every phase it has seen).
func withoutZeros(m map[string]store.PhaseBacklog) map[string]store.PhaseBacklog {
	out := make(map[string]store.PhaseBacklog)
	for k, v := range m {
		if v.Scheduled != 0 {
			out[k] = v
		}
	}
	return out
}
