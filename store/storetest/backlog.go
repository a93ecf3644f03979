package storetest

import (
	"testing"
	"time"

	"github.com/retryd/retryd/store"
)

// testBacklog: every backend counts scheduled, unleased attempts per phase
// (the retryd_backlog metric), and refuses a ListJobs cursor it did not make
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
		requireEqual(t, map[string]int64{}, withoutZeros(counts), "empty store")
		h.fail(failure("a", "extraction", 0, Base))
		h.fail(failure("b", "extraction", 0, Base))
		h.fail(failure("c", "chunking", 0, Base))
		h.claimOne(at(time.Hour), "chunking")
		counts, err = bc.Backlog(h.ctx)
		requireErr(t, err, nil, "Backlog")
		requireEqual(t, map[string]int64{"extraction": 2}, withoutZeros(counts), "a leased attempt is not backlog")
	})
	t.Run("BadCursor", func(t *testing.T) {
		h := setup(t, newStore)
		for _, c := range []string{"not a cursor!", "AAAA", "\x00\xff"} {
			_, err := h.s.ListJobs(h.ctx, store.ListQuery{Cursor: c, Limit: 10})
			requireErr(t, err, store.ErrInvalidArgument, "ListJobs with cursor %q", c)
		}
	})
}

func withoutZeros(m map[string]int64) map[string]int64 {
	out := make(map[string]int64)
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}
