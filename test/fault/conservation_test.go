package fault_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/redisstore"
)

// census counts where the acknowledged jobs ended: each in exactly one place.
type census struct {
	completed, failed, canceled, scheduled, inFlight int
}

func (c census) total() int { return c.completed + c.failed + c.canceled + c.scheduled + c.inFlight }

func (c census) String() string {
	return fmt.Sprintf("%d jobs: %d acked (completed), %d given up, %d canceled, %d scheduled, %d in flight",
		c.total(), c.completed, c.failed, c.canceled, c.scheduled, c.inFlight)
}

// checkConservation holds the store to the ledger. Every acknowledged
// report must be in Redis as an attempt of its job (with the verdict the
// client was given), every job must end in exactly one of completed, given
// up, canceled, scheduled or in flight — consistent with the last thing
// acknowledged about it —, and nothing may be counted twice: each job is in
// exactly one ListJobs state, the due sets hold exactly the scheduled jobs
// and the lease set exactly the leased ones, and no attempt is recorded
// twice. Jobs in Redis that the ledger does not know are allowed only if a
// first report of them was sent and never acknowledged (it may have been
// applied: UNAVAILABLE means "not acknowledged", not "not applied").
func checkConservation(t *testing.T, st *redisstore.Store, l *ledger) census {
	t.Helper()
	ctx := context.Background()
	l.mu.Lock()
	acked := maps.Clone(l.acked)
	canceled := maps.Clone(l.canceled)
	attempted := maps.Clone(l.attempted)
	l.mu.Unlock()

	// Read every job first, eight at a time (thousands of round trips).
	ids := slices.Sorted(maps.Keys(acked))
	jobs := make([]store.Job, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ids); i += 8 {
				jobs[i], errs[i] = st.GetJob(ctx, ids[i])
			}
		}()
	}
	wg.Wait()

	var c census
	where := map[string]string{}
	for i, job := range ids {
		acks := acked[job]
		j, err := jobs[i], errs[i]
		require.NoError(t, err, "job %s was acknowledged but is not in Redis", job)

		type key struct {
			cycle uint32
			phase string
			rc    uint32
		}
		seen := map[key]bool{}
		for _, a := range j.Attempts {
			k := key{a.Cycle, a.Phase, a.RetryCount}
			require.False(t, seen[k], "job %s: attempt %+v recorded twice", job, k)
			seen[k] = true
		}
		for _, a := range acks {
			var found *store.Attempt
			for i := range j.Attempts {
				at := &j.Attempts[i]
				if at.Cycle == 1 && at.Phase == "extraction" && at.RetryCount == a.rc {
					found = at
				}
			}
			require.NotNil(t, found, "job %s: the acknowledged report of attempt #%d (via %s) is not in Redis", job, a.rc, a.via)
			require.Equal(t, a.success, found.Status == store.AttemptSucceeded, "job %s #%d: acknowledged as success=%v, stored as %v", job, a.rc, a.success, found.Status)
			if !a.success {
				want := store.DecisionRetry
				if a.decision == retrydv1.Decision_DECISION_GIVE_UP {
					want = store.DecisionGiveUp
				}
				require.Equal(t, want, found.Verdict.Decision, "job %s #%d: the stored verdict is not the one the client was given", job, a.rc)
			}
		}

		place := ""
		switch {
		case j.State == store.StateCompleted:
			c.completed++
			place = "completed"
		case j.State == store.StateFailed:
			c.failed++
			place = "failed"
		case j.State == store.StateCanceled:
			c.canceled++
			place = "canceled"
		case j.State == store.StateProcessing && j.InBackoff():
			c.scheduled++
			place = "scheduled"
		case j.State == store.StateProcessing && j.LeaseID != "":
			c.inFlight++
			place = "in flight"
		default:
			t.Fatalf("job %s is %v with nothing pending: it can never finish", job, j.State)
		}
		where[job] = place

		// The last acknowledged attempt decides where the job is: the one
		// with the highest retry_count (a success over a failure of the
		// same attempt cannot happen: that is a conflict). Not the last
		// acknowledgement in time: a report whose answer was lost may be
		// acknowledged, as a duplicate, after its retry ran.
		last := acks[0]
		for _, a := range acks[1:] {
			if a.rc > last.rc {
				last = a
			}
		}
		switch {
		case canceled[job]:
			require.Equal(t, "canceled", place, "job %s: its cancel was acknowledged", job)
		case last.success:
			require.Equal(t, "completed", place, "job %s: its last acknowledged report was a success", job)
		case last.decision == retrydv1.Decision_DECISION_GIVE_UP:
			require.Equal(t, "failed", place, "job %s: retryd acknowledged giving up", job)
		default:
			// A retry was promised: it is still ahead, or its worker never
			// reported and the reaper recorded the lease as expired (and
			// then gave up once the retries were used).
			if place == "failed" {
				lastAttempt := j.Attempts[len(j.Attempts)-1]
				require.Equal(t, "LeaseExpired", lastAttempt.ErrorType, "job %s: a promised retry ended failed without an acknowledged give-up", job)
			} else {
				require.Contains(t, []string{"scheduled", "in flight"}, place, "job %s: a promised retry vanished", job)
			}
		}
	}
	require.Equal(t, len(acked), c.total())

	// Each job is listed in exactly one state, and the backoff listing, the
	// due sets and the lease set agree with the jobs.
	listed := map[string]string{}
	for _, state := range []store.JobState{store.StateProcessing, store.StateFailed, store.StateCompleted, store.StateCanceled} {
		for _, j := range listAll(t, st, store.ListQuery{State: state}) {
			prev, dup := listed[j.ID]
			require.False(t, dup, "job %s is listed as %s and as %s", j.ID, prev, state)
			listed[j.ID] = state.String()
		}
	}
	for id := range listed {
		if _, ok := acked[id]; !ok {
			require.True(t, attempted[id], "job %s is in Redis but was never reported", id)
		}
	}
	for id := range acked {
		_, ok := listed[id]
		require.True(t, ok, "job %s is in no listing", id)
	}
	backoff := listAll(t, st, store.ListQuery{InBackoff: true})
	backlog, err := st.Backlog(ctx)
	require.NoError(t, err)
	var due int64
	for _, b := range backlog {
		due += b.Scheduled
	}
	require.Equal(t, int64(len(backoff)), due, "the due sets hold exactly the jobs in backoff")
	leases, err := st.ExpiredLeases(ctx, time.Now().Add(1000*time.Hour), 1_000_000)
	require.NoError(t, err)
	leasedJobs := map[string]bool{}
	for _, le := range leases {
		require.False(t, leasedJobs[le.JobID], "job %s holds two leases", le.JobID)
		leasedJobs[le.JobID] = true
	}
	scheduled, inFlight := 0, 0
	for id, place := range where {
		switch place {
		case "scheduled":
			scheduled++
		case "in flight":
			inFlight++
			require.True(t, leasedJobs[id], "job %s is in flight but not in the lease set", id)
		}
	}
	require.GreaterOrEqual(t, len(backoff), scheduled)
	require.GreaterOrEqual(t, len(leases), inFlight)
	t.Logf("conservation: %v", c)
	return c
}

// listAll pages through ListJobs.
func listAll(t *testing.T, st store.Store, q store.ListQuery) []store.Job {
	t.Helper()
	q.Limit = 1000
	var all []store.Job
	for range 10_000 {
		page, err := st.ListJobs(context.Background(), q)
		require.NoError(t, err)
		all = append(all, page.Jobs...)
		if page.NextCursor == "" {
			return all
		}
		q.Cursor = page.NextCursor
	}
	t.Fatalf("ListJobs(%+v) never ends", q)
	return nil
}
