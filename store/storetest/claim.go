package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// schedule records an unleased first failure of jobID's phase at Base whose
// retry is due at Base+due.
func (h *harness) schedule(jobID, phase string, due time.Duration) store.Failure {
	h.t.Helper()
	f := failure(jobID, phase, 0, at(0))
	f.Verdict = retryIn(1, due, at(0))
	h.fail(f)
	return f
}

func taskIDs(tasks []store.Task) []string {
	ids := make([]string, len(tasks))
	for i, task := range tasks {
		ids[i] = task.JobID
	}
	return ids
}

func testClaim(t *testing.T, newStore Factory) {
	t.Run("EarliestDueFirstAcrossPhases", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("x-3m", extraction, 3*time.Minute)
		h.schedule("c-1m", chunking, 1*time.Minute)
		h.schedule("x-2m", extraction, 2*time.Minute)
		h.schedule("c-4m", chunking, 4*time.Minute)
		h.schedule("x-10m", extraction, 10*time.Minute)
		h.schedule("k-30s", kgIngest, 30*time.Second) // a phase nobody asks for

		tasks := h.claim(at(5*time.Minute), 2, extraction, chunking)
		require.Equal(t, []string{"c-1m", "x-2m"}, taskIDs(tasks), "the first page: earliest due first, up to the limit")
		tasks = h.claim(at(5*time.Minute), 10, chunking, extraction)
		require.Equal(t, []string{"x-3m", "c-4m"}, taskIDs(tasks), "the rest that is due, whatever the order of phases")
		for i, want := range []time.Duration{3 * time.Minute, 4 * time.Minute} {
			require.True(t, tasks[i].DueAt.Equal(at(want)), "task %d DueAt = %v, want %v", i, tasks[i].DueAt, at(want))
		}
		require.Empty(t, h.claim(at(5*time.Minute), 10, extraction, chunking), "claimed attempts leave the due index")
		require.Equal(t, []string{"x-10m"}, taskIDs(h.claim(at(10*time.Minute), 10, extraction, chunking)))
		require.Equal(t, []string{"k-30s"}, taskIDs(h.claim(at(10*time.Minute), 10, kgIngest)))
	})

	// Due times are kept in microseconds rounded up and compared with now
	// rounded down (store.DueMicros, store.NowMicros): an attempt is never
	// handed out before it is due.
	t.Run("NeverBeforeDue", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("sub-us", extraction, 0, at(0))
		f.Verdict = retryIn(1, time.Minute+1500*time.Nanosecond, at(0))
		h.fail(f)
		h.schedule("exact", chunking, time.Minute)

		due := dueMicros(f.Verdict.DueAt)
		require.True(t, due.Equal(at(time.Minute+2*time.Microsecond)))
		require.True(t, h.job("sub-us").DueAt.Equal(due), "Job.DueAt is the due time rounded up to the microsecond")
		next, ok := h.nextDue(extraction)
		require.True(t, ok)
		require.True(t, next.Equal(due), "NextDue = %v, want %v", next, due)

		require.Empty(t, h.claim(f.Verdict.DueAt.Add(-time.Nanosecond), 10, extraction))
		require.Empty(t, h.claim(at(time.Minute-time.Nanosecond), 10, chunking))
		require.Equal(t, []string{"exact"}, taskIDs(h.claim(at(time.Minute), 10, chunking)), "due at exactly now is due")
		tasks := h.claim(due, 10, extraction)
		require.Equal(t, []string{"sub-us"}, taskIDs(tasks))
		require.True(t, tasks[0].DueAt.Equal(due), "Task.DueAt = %v, want %v", tasks[0].DueAt, due)
	})

	t.Run("TaskLeaseAndJob", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		h.fail(f)
		before := h.job("job-1")

		tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
			Phases: []string{extraction}, Limit: 5, Now: at(2 * time.Minute), LeaseFor: 45 * time.Second, WorkerID: "worker-7",
		})
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		task := tasks[0]
		require.NotEmpty(t, task.LeaseID)
		expires := at(2*time.Minute + 45*time.Second)
		requireEqual(t, store.Task{
			JobID: "job-1", Phase: extraction, RetryCount: 1, Cycle: 1,
			Payload: f.Payload, Labels: f.Labels,
			LeaseID: task.LeaseID, LeaseExpiresAt: expires, DueAt: at(time.Minute),
		}, task, "claimed task")

		// Reading: leasing does not count as a change of the job: UpdatedAt
		// moves with reports, RetryJob and CancelJob only (ReturnLease has no
		// "now" to write).
		want := before
		want.LeaseID, want.LeaseExpiresAt, want.WorkerID = task.LeaseID, expires, "worker-7"
		h.requireJob(want)
		require.False(t, want.InBackoff(), "a leased attempt is not in backoff")

		_, ok := h.nextDue(extraction)
		require.False(t, ok, "a leased attempt is not scheduled")
		exp, ok := h.nextExpiry()
		require.True(t, ok)
		require.True(t, exp.Equal(expires), "NextLeaseExpiry = %v, want %v", exp, expires)
		require.Empty(t, h.expired(expires.Add(-time.Microsecond), 10), "not expired before its expiry")
		requireEqual(t, []store.Lease{{
			JobID: "job-1", LeaseID: task.LeaseID, Phase: extraction, RetryCount: 1, Cycle: 1,
			WorkerID: "worker-7", LeasedAt: at(2 * time.Minute), ExpiresAt: expires,
		}}, h.expired(expires, 10), "expired leases at the expiry")
		require.Empty(t, h.claim(at(time.Hour), 10, extraction), "a leased attempt is not claimed twice")
	})

	t.Run("ConcurrentDispatchCycle", func(t *testing.T) { testDispatchCycle(t, newStore) })

	for _, claimers := range []int{2, 8} {
		t.Run(fmt.Sprintf("ConcurrentClaimers%d", claimers), func(t *testing.T) {
			h := setup(t, newStore)
			const jobs = 40
			for i := range jobs {
				phase := extraction
				if i%2 == 1 {
					phase = chunking
				}
				h.schedule(fmt.Sprintf("job-%02d", i), phase, time.Duration(i%7)*time.Second)
			}
			var (
				mu      sync.Mutex
				claimed = map[string]int{}
				leases  = map[string]bool{}
				errs    []error
				wg      sync.WaitGroup
			)
			start := make(chan struct{})
			for w := range claimers {
				wg.Go(func() {
					<-start
					for {
						tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
							Phases: []string{extraction, chunking}, Limit: 3, Now: at(time.Minute),
							LeaseFor: leaseFor, WorkerID: fmt.Sprintf("worker-%d", w),
						})
						mu.Lock()
						if err != nil {
							errs = append(errs, err)
						}
						for _, task := range tasks {
							claimed[task.JobID]++
							leases[task.LeaseID] = true
						}
						mu.Unlock()
						if err != nil || len(tasks) == 0 {
							return
						}
					}
				})
			}
			close(start)
			wg.Wait()
			require.Empty(t, errs)
			require.Len(t, claimed, jobs, "every due attempt is claimed")
			for id, n := range claimed {
				require.Equal(t, 1, n, "%s was claimed %d times", id, n)
			}
			require.Len(t, leases, jobs, "every claim has its own lease id")
		})
	}
}

// testDispatchCycle runs the specification's whole retry cycle for many
// jobs at once: concurrent dispatchers claim, report failures that retry at
// once, and give up after retry 3. Claims and reports interleave freely;
// every job must end failed with exactly attempts 0..3 and nothing pending.
func testDispatchCycle(t *testing.T, newStore Factory) {
	h := setup(t, newStore)
	const jobs, dispatchers = 20, 4
	for i := range jobs {
		f := failure(fmt.Sprintf("job-%02d", i), extraction, 0, at(0))
		f.Verdict = retryIn(1, 0, at(0))
		h.fail(f)
	}
	now := at(time.Hour) // every retry below is due at Base: all are due
	work := func(worker string) error {
		for {
			tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
				Phases: []string{extraction}, Limit: 2, Now: now, LeaseFor: leaseFor, WorkerID: worker,
			})
			if err != nil || len(tasks) == 0 {
				return err
			}
			for _, task := range tasks {
				f := leasedFailure(task, now)
				if task.RetryCount < 3 {
					f.Verdict = retryIn(task.RetryCount+1, 0, at(0))
				} else {
					f.Verdict = giveUp("max retries (3) reached.")
				}
				if _, err := h.s.RecordFailure(h.ctx, f); err != nil {
					return err
				}
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, dispatchers)
	for w := range dispatchers {
		wg.Go(func() { errs[w] = work(fmt.Sprintf("worker-%d", w)) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	// A dispatcher that found nothing may have stopped while another was
	// still reporting: finish what was rescheduled after that.
	require.NoError(t, work("worker-last"))

	for i := range jobs {
		j := h.job(fmt.Sprintf("job-%02d", i))
		require.Equal(t, store.StateFailed, j.State, j.ID)
		require.Equal(t, uint32(3), j.TotalRetries, j.ID)
		require.Empty(t, j.PendingPhase, j.ID)
		require.Len(t, j.Attempts, 4, j.ID)
		for rc, a := range j.Attempts {
			require.Equal(t, uint32(rc), a.RetryCount, "%s attempt %d", j.ID, rc)
		}
	}
	_, ok := h.nextDue(extraction)
	require.False(t, ok)
	_, ok = h.nextExpiry()
	require.False(t, ok)
	requireEqual(t, []store.PhaseStats{{
		Phase: extraction, Attempts: 4 * jobs, Retries: 3 * jobs, GivenUp: jobs,
		FailuresByType: map[string]uint64{"requests.exceptions.ConnectionError": 4 * jobs},
	}}, h.stats(store.StatsQuery{Since: at(0), Until: at(2 * time.Hour)}), "Stats")
}

func testExtendLease(t *testing.T, newStore Factory) {
	t.Run("ExtendsNeverShortens", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction) // expires at 1m30s
		leased := h.job("job-1")

		until, err := h.s.ExtendLease(h.ctx, "job-1", task.LeaseID, at(2*time.Minute), at(time.Minute+10*time.Second))
		require.NoError(t, err)
		require.True(t, until.Equal(at(2*time.Minute)), "ExtendLease returned %v", until)
		want := leased
		want.LeaseExpiresAt = at(2 * time.Minute)
		h.requireJob(want)
		exp, _ := h.nextExpiry()
		require.True(t, exp.Equal(at(2*time.Minute)), "NextLeaseExpiry = %v", exp)
		require.Empty(t, h.expired(at(time.Minute+30*time.Second), 10), "the old expiry no longer counts")
		require.Len(t, h.expired(at(2*time.Minute), 10), 1)

		until, err = h.s.ExtendLease(h.ctx, "job-1", task.LeaseID, at(time.Minute+40*time.Second), at(time.Minute+20*time.Second))
		require.NoError(t, err, "an earlier until is not an error")
		require.True(t, until.Equal(at(2*time.Minute)), "an earlier until must not shorten the lease: got %v", until)
		h.requireJob(want)
	})

	t.Run("RefusesLeasesNotHeld", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		h.fail(failure("job-2", extraction, 0, at(0)))
		h.fail(failure("job-3", extraction, 0, at(0))) // stays scheduled
		tasks := h.claim(at(time.Minute), 2, extraction)
		require.Len(t, tasks, 2)
		byJob := map[string]store.Task{tasks[0].JobID: tasks[0], tasks[1].JobID: tasks[1]}
		var scheduled string
		for _, id := range []string{"job-1", "job-2", "job-3"} {
			if _, ok := byJob[id]; !ok {
				scheduled = id
			}
		}
		var leased []string
		for id := range byJob {
			leased = append(leased, id)
		}
		a, b := byJob[leased[0]], byJob[leased[1]]
		before := h.snapshot(a.JobID)

		for _, c := range []struct{ what, job, lease string }{
			{"an unknown lease", a.JobID, "no-such-lease"},
			{"another job's lease", a.JobID, b.LeaseID},
			{"an unknown job", "no-such-job", a.LeaseID},
			{"a job with a scheduled, unleased attempt", scheduled, a.LeaseID},
		} {
			_, err := h.s.ExtendLease(h.ctx, c.job, c.lease, at(time.Hour), at(time.Minute+time.Second))
			requireErr(t, err, store.ErrLeaseNotHeld, "ExtendLease of %s", c.what)
		}
		h.requireUnchanged(before, "refused extensions")

		// Reading: a lease whose expiry is at or before now has expired, as
		// for ExpiredLeases and the reaper; it cannot be revived even though
		// the reaper has not recorded it yet.
		_, err := h.s.ExtendLease(h.ctx, a.JobID, a.LeaseID, at(time.Hour), a.LeaseExpiresAt)
		requireErr(t, err, store.ErrLeaseNotHeld, "ExtendLease at the expiry")
		_, err = h.s.ExtendLease(h.ctx, a.JobID, a.LeaseID, at(time.Hour), a.LeaseExpiresAt.Add(time.Second))
		requireErr(t, err, store.ErrLeaseNotHeld, "ExtendLease after the expiry")
		h.requireUnchanged(before, "refused extensions of an expired lease")

		h.succeed(leasedSuccess(b, at(time.Minute+5*time.Second)))
		_, err = h.s.ExtendLease(h.ctx, b.JobID, b.LeaseID, at(time.Hour), at(time.Minute+6*time.Second))
		requireErr(t, err, store.ErrLeaseNotHeld, "ExtendLease of a reported lease")
	})
}

func testReturnLease(t *testing.T, newStore Factory) {
	t.Run("BackAtOriginalDue", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		h.schedule("job-2", extraction, 2*time.Minute)
		scheduled := h.job("job-1")
		task := h.claimOne(at(90*time.Second), extraction)
		require.Equal(t, "job-1", task.JobID)

		require.NoError(t, h.s.ReturnLease(h.ctx, "job-1", task.LeaseID))
		h.requireJob(scheduled) // no attempt recorded, lease gone, due as before
		due, ok := h.nextDue(extraction)
		require.True(t, ok)
		require.True(t, due.Equal(at(time.Minute)), "NextDue = %v, want the original due time", due)
		_, ok = h.nextExpiry()
		require.False(t, ok)

		tasks := h.claim(at(5*time.Minute), 10, extraction)
		require.Equal(t, []string{"job-1", "job-2"}, taskIDs(tasks), "the returned attempt keeps its place in due order")
		require.True(t, tasks[0].DueAt.Equal(at(time.Minute)))
		require.Equal(t, uint32(1), tasks[0].RetryCount)
		require.NotEqual(t, task.LeaseID, tasks[0].LeaseID)
	})

	t.Run("RefusesLeasesNotHeld", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		h.schedule("job-2", chunking, time.Minute)
		h.schedule("job-3", kgIngest, time.Minute)
		t1 := h.claimOne(at(time.Minute), extraction)
		t2 := h.claimOne(at(time.Minute), chunking)
		require.NoError(t, h.s.ReturnLease(h.ctx, "job-1", t1.LeaseID))
		before := h.snapshot("job-1")
		for _, c := range []struct{ what, job, lease string }{
			{"a returned lease", "job-1", t1.LeaseID},
			{"an unknown lease", "job-2", "no-such-lease"},
			{"another job's lease", "job-1", t2.LeaseID},
			{"an unknown job", "no-such-job", t2.LeaseID},
			{"a scheduled, unleased attempt", "job-3", t2.LeaseID},
		} {
			requireErr(t, h.s.ReturnLease(h.ctx, c.job, c.lease), store.ErrLeaseNotHeld, "ReturnLease of %s", c.what)
		}
		h.requireUnchanged(before, "refused returns")
		h.succeed(leasedSuccess(t2, at(2*time.Minute)))
		requireErr(t, h.s.ReturnLease(h.ctx, "job-2", t2.LeaseID), store.ErrLeaseNotHeld, "ReturnLease of a reported lease")
	})
}

func testReaper(t *testing.T, newStore Factory) {
	t.Run("ExpiredLeasesOrderAndLimit", func(t *testing.T) {
		h := setup(t, newStore)
		var tasks []store.Task
		for i, id := range []string{"j1", "j2", "j3", "j4"} {
			due := time.Duration(i+1) * time.Minute
			h.schedule(id, extraction, due)
			tasks = append(tasks, h.claimOne(at(due), extraction)) // expires at due+30s
		}
		_, err := h.s.ExtendLease(h.ctx, "j1", tasks[0].LeaseID, at(10*time.Minute), at(time.Minute))
		require.NoError(t, err)

		ids := func(leases []store.Lease) []string {
			out := make([]string, len(leases))
			for i, l := range leases {
				out[i] = l.JobID
			}
			return out
		}
		require.Empty(t, h.expired(at(2*time.Minute+29*time.Second), 10))
		require.Equal(t, []string{"j2", "j3", "j4"}, ids(h.expired(at(4*time.Minute+30*time.Second), 10)))
		require.Equal(t, []string{"j2", "j3"}, ids(h.expired(at(4*time.Minute+30*time.Second), 2)))
		got := h.expired(at(time.Hour), 10)
		require.Equal(t, []string{"j2", "j3", "j4", "j1"}, ids(got), "earliest expiry first")
		requireEqual(t, store.Lease{
			JobID: "j1", LeaseID: tasks[0].LeaseID, Phase: extraction, RetryCount: 1, Cycle: 1,
			WorkerID: "worker-1", LeasedAt: at(time.Minute), ExpiresAt: at(10 * time.Minute),
		}, got[3], "an extended lease")
	})

	t.Run("RecordsExpiredLease", func(t *testing.T) {
		h := setup(t, newStore)
		f0 := failure("job-1", extraction, 0, at(0))
		h.fail(f0)
		task := h.claimOne(at(time.Minute), extraction)
		leased := h.job("job-1")
		lease := h.expired(task.LeaseExpiresAt, 10)
		require.Len(t, lease, 1)

		early := leasedFailure(task, task.LeaseExpiresAt.Add(-time.Microsecond))
		early.LeaseExpired = true
		_, err := h.s.RecordFailure(h.ctx, early)
		requireErr(t, err, store.ErrLeaseActive, "reaper report before the expiry")
		h.requireJob(leased)

		// The reaper reports at exactly the expiry: LeaseExpiresAt <= Now.
		r := store.Failure{
			JobID: "job-1", Phase: lease[0].Phase, RetryCount: lease[0].RetryCount, LeaseID: lease[0].LeaseID,
			LeaseExpired: true, ErrorType: "LeaseExpired", ErrorMessage: "lease of worker-1 expired after 30s",
			Now: task.LeaseExpiresAt, Verdict: retryIn(2, 5*time.Minute, task.LeaseExpiresAt),
		}
		res := h.fail(r)
		requireEqual(t, store.FailureResult{Verdict: r.Verdict}, res, "reaper report")
		want := leased
		want.LeaseID, want.LeaseExpiresAt, want.WorkerID = "", time.Time{}, ""
		want.PendingRetryCount, want.DueAt = 2, r.Verdict.DueAt
		want.LastFailedRetryCount, want.LastFailedAt, want.LastErrorType, want.LastError = 1, r.Now, r.ErrorType, r.ErrorMessage
		want.UpdatedAt = r.Now
		want.Attempts = append(want.Attempts, failedAttempt(r, 1, f0.Payload, "worker-1", at(time.Minute)))
		h.requireJob(want)
		require.Empty(t, h.expired(at(time.Hour), 10))
		_, ok := h.nextExpiry()
		require.False(t, ok)
	})

	t.Run("ExtendedLeaseIsActive", func(t *testing.T) {
		h := setup(t, newStore)
		h.fail(failure("job-1", extraction, 0, at(0)))
		task := h.claimOne(at(time.Minute), extraction)
		seen := h.expired(task.LeaseExpiresAt, 10) // the reaper sees it expired...
		require.Len(t, seen, 1)
		// ...but the worker's extension lands first (a race the reaper loses).
		_, err := h.s.ExtendLease(h.ctx, "job-1", task.LeaseID, at(5*time.Minute), task.LeaseExpiresAt.Add(-time.Millisecond))
		require.NoError(t, err)
		before := h.snapshot("job-1")
		r := leasedFailure(task, task.LeaseExpiresAt)
		r.LeaseExpired = true
		_, err = h.s.RecordFailure(h.ctx, r)
		requireErr(t, err, store.ErrLeaseActive, "reaper report of an extended lease")
		h.requireUnchanged(before, "a refused reaper report")

		r.Now = at(5 * time.Minute)
		r.Verdict = retryIn(2, time.Minute, r.Now)
		require.False(t, h.fail(r).Duplicate, "at the new expiry the reaper's report is applied")
	})
}

func testNextDue(t *testing.T, newStore Factory) {
	t.Run("EmptyStore", func(t *testing.T) {
		h := setup(t, newStore)
		_, ok := h.nextDue(extraction, chunking)
		require.False(t, ok)
		_, ok = h.nextExpiry()
		require.False(t, ok)
		require.Empty(t, h.expired(at(time.Hour), 10))
		require.Empty(t, h.claim(at(time.Hour), 10, extraction))
	})

	t.Run("EarliestOfThePhases", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("x", extraction, 5*time.Minute)
		h.schedule("c", chunking, 2*time.Minute)
		h.schedule("k", kgIngest, time.Minute)
		for _, c := range []struct {
			phases []string
			want   time.Duration
		}{
			{[]string{extraction}, 5 * time.Minute},
			{[]string{extraction, chunking}, 2 * time.Minute},
			{[]string{chunking, kgIngest, extraction}, time.Minute},
		} {
			due, ok := h.nextDue(c.phases...)
			require.True(t, ok, "NextDue(%v)", c.phases)
			require.True(t, due.Equal(at(c.want)), "NextDue(%v) = %v, want %v", c.phases, due, at(c.want))
		}
		_, ok := h.nextDue("unknown_phase")
		require.False(t, ok)

		h.claimOne(at(time.Minute), kgIngest)
		_, ok = h.nextDue(kgIngest)
		require.False(t, ok, "a leased attempt is not due")
		exp, ok := h.nextExpiry()
		require.True(t, ok)
		require.True(t, exp.Equal(at(time.Minute+leaseFor)), "NextLeaseExpiry = %v", exp)
		h.claimOne(at(3*time.Minute), chunking)
		exp, _ = h.nextExpiry()
		require.True(t, exp.Equal(at(time.Minute+leaseFor)), "the earliest expiry: %v", exp)
	})
}
