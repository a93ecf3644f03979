package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// maxExamples bounds the violations quoted in the summary.
const maxExamples = 5

// verdict is the outcome of the self-checks of one run.
type verdict struct {
	// checked is the number of jobs read back from retryd.
	checked int
	// bad is the number of jobs that did not end as the workload says.
	bad      int
	examples []string
	// err is set when the jobs could not be read back at all.
	err error
}

func (v *verdict) violation(format string, args ...any) {
	v.bad++
	if len(v.examples) < maxExamples {
		v.examples = append(v.examples, fmt.Sprintf(format, args...))
	}
}

// verifyCycle reads every job back (GetJob, C at a time) and checks that it
// is completed with exactly K+1 attempts: retry_count 0 to K, failed but the
// last, which succeeded, all in the benchmark's phase and first cycle.
func (r *runner) verifyCycle(ctx context.Context) verdict {
	var (
		mu   sync.Mutex
		v    verdict
		next atomic.Int64
		wg   sync.WaitGroup
	)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for w := range r.o.c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admin := retrydv1.NewAdminServiceClient(r.conns[w%len(r.conns)])
			for {
				i := int(next.Add(1) - 1)
				if i >= r.o.n || ctx.Err() != nil {
					return
				}
				id := r.jobID(i)
				res, err := admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
				if err != nil {
					cancel(fmt.Errorf("GetJob %s: %w", id, err))
					return
				}
				problem := r.checkJob(res.GetJob())
				mu.Lock()
				v.checked++
				if problem != "" {
					v.violation("%s: %s", id, problem)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	v.err = context.Cause(ctx)
	return v
}

// checkJob says what is wrong with a job at the end of the cycle, or "".
func (r *runner) checkJob(j *retrydv1.Job) string {
	k := r.o.k
	var problems []string
	if j.GetState() != retrydv1.JobState_JOB_STATE_COMPLETED {
		problems = append(problems, fmt.Sprintf("state %v, want completed", j.GetState()))
	}
	if n := len(j.GetAttempts()); n != k+1 {
		problems = append(problems, fmt.Sprintf("%d attempts, want exactly %d", n, k+1))
	}
	for i, a := range j.GetAttempts() {
		want := retrydv1.AttemptStatus_ATTEMPT_STATUS_FAILED
		if i == k {
			want = retrydv1.AttemptStatus_ATTEMPT_STATUS_SUCCEEDED
		}
		if a.GetRetryCount() != uint32(i) || a.GetStatus() != want || a.GetPhase() != r.o.phase || a.GetCycle() != 1 {
			problems = append(problems, fmt.Sprintf("attempt %d is retry_count %d %v of phase %q cycle %d, want retry_count %d %v",
				i+1, a.GetRetryCount(), a.GetStatus(), a.GetPhase(), a.GetCycle(), i, want))
			break
		}
	}
	return strings.Join(problems, "; ")
}

// verifyPending checks the memory point: every job of the run is in
// backoff after its original attempt failed, its retry due D after the
// failure, as ListJobs (in_backoff, the run's phase) shows them; other
// runs' jobs in the phase are ignored.
func (r *runner) verifyPending(ctx context.Context) verdict {
	var v verdict
	admin := retrydv1.NewAdminServiceClient(r.conns[0])
	seen := make([]bool, r.o.n)
	token := ""
	for {
		page, err := admin.ListJobs(ctx, &retrydv1.ListJobsRequest{Phase: r.o.phase, InBackoff: true, PageSize: 1000, PageToken: token})
		if err != nil {
			v.err = fmt.Errorf("ListJobs: %w", err)
			return v
		}
		for _, j := range page.GetJobs() {
			i, ok := r.jobIndex(j.GetJobId())
			if !ok {
				continue
			}
			v.checked++
			switch {
			case seen[i]:
				v.violation("%s: listed twice", j.GetJobId())
			case j.GetState() != retrydv1.JobState_JOB_STATE_PROCESSING || j.GetRetryCount() != 0 ||
				!delayIs(j.GetNextAttemptAt().AsTime().Sub(j.GetFailedAt().AsTime()), r.o.delay):
				v.violation("%s: %v after the failure of retry_count %d at %v, next attempt at %v; want processing, retry due %v after the original attempt failed",
					j.GetJobId(), j.GetState(), j.GetRetryCount(), j.GetFailedAt().AsTime(), j.GetNextAttemptAt().AsTime(), r.o.delay)
			}
			seen[i] = true
		}
		token = page.GetNextPageToken()
		if token == "" {
			break
		}
	}
	for i, ok := range seen {
		if !ok {
			v.violation("%s: not in backoff", r.jobID(i))
		}
	}
	return v
}

// cancelJobs cancels the run's jobs on a --target retryd after the memory
// point, so that 200,000 retries do not fall due on it an hour later.
func (r *runner) cancelJobs(ctx context.Context) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	for w := range r.o.c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admin := retrydv1.NewAdminServiceClient(r.conns[w%len(r.conns)])
			for {
				i := int(next.Add(1) - 1)
				if i >= r.o.n || first.Load() != nil {
					return
				}
				_, err := admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: r.jobID(i), Reason: "retrybench memory point: cleanup"})
				if err != nil {
					err = fmt.Errorf("CancelJob %s: %w", r.jobID(i), err)
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// delayIs reports whether a due time minus a failure time, as stored (due
// rounded up, failure rounded down to microseconds), is the delay d.
func delayIs(got, d time.Duration) bool {
	return got >= d && got <= d+time.Microsecond
}
