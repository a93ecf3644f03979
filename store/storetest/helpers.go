package storetest

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// Phases of the specification's pipeline. Note that "chunking" sorts before
// "extraction": a backend that orders attempts by phase name instead of by
// when they were recorded fails the history tests.
const (
	extraction = "extraction"
	chunking   = "chunking"
	kgIngest   = "kg_ingest"
)

// leaseFor is the lease length used by the scenarios.
const leaseFor = 30 * time.Second

// eventWait bounds how long the suite waits for an event that must come. It
// is only reached when a store fails to deliver.
const eventWait = 5 * time.Second

// at returns Base+d.
func at(d time.Duration) time.Time { return Base.Add(d) }

// equate is how the suite compares store values: nil and empty slices and
// maps are the same (a store may return either), byte slices compare with
// bytes.Equal (fast on 64 KiB payloads), and time.Time compares with Equal
// (go-cmp uses the method), so the location does not matter.
var equate = cmp.Options{
	cmp.FilterPath(func(p cmp.Path) bool { return p.Last().Type() != bytesType }, cmpopts.EquateEmpty()),
	cmp.Comparer(bytes.Equal),
}

var bytesType = reflect.TypeFor[[]byte]()

// harness is what a subtest works with: a fresh store and a context.
type harness struct {
	t   *testing.T
	s   store.Store
	ctx context.Context
}

// setup marks the test parallel and builds a fresh store with default options.
func setup(t *testing.T, newStore Factory) *harness {
	t.Helper()
	return setupWith(t, newStore, Options{})
}

// setupWith is setup with explicit options.
func setupWith(t *testing.T, newStore Factory, opts Options) *harness {
	t.Helper()
	t.Parallel()
	s := newStore(t, opts)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &harness{t: t, s: s, ctx: t.Context()}
}

// payloadOf is the opaque payload the scenarios store for a phase of a job.
func payloadOf(jobID, phase string) []byte {
	return []byte(fmt.Sprintf(`{"pipeline_job_id":%q,"source_location":"s3://docs/%s/%s"}`, jobID, jobID, phase))
}

// labelsOf are the labels the scenarios report for a job.
func labelsOf(jobID string) map[string]string {
	return map[string]string{"document_id": "doc-" + jobID, "source_name": jobID + ".pdf"}
}

// retryIn is a retry verdict scheduling retry next after delay from now.
func retryIn(next uint32, delay time.Duration, now time.Time) store.Verdict {
	return store.Verdict{
		Decision:       store.DecisionRetry,
		Retryable:      true,
		Reason:         fmt.Sprintf("ConnectionError is retryable; retry %d of 3 in %v.", next, delay),
		NextRetryCount: next,
		Delay:          delay,
		DueAt:          now.Add(delay),
	}
}

// giveUp is a give-up verdict.
func giveUp(reason string) store.Verdict {
	return store.Verdict{Decision: store.DecisionGiveUp, Reason: reason}
}

// failure is an unleased failed attempt of jobID's phase at now, with a
// verdict that retries one minute later.
func failure(jobID, phase string, rc uint32, now time.Time) store.Failure {
	return store.Failure{
		JobID:        jobID,
		Phase:        phase,
		RetryCount:   rc,
		ErrorType:    "requests.exceptions.ConnectionError",
		ErrorMessage: fmt.Sprintf("connection reset by peer (%s attempt %d)", phase, rc),
		HTTPStatus:   503,
		Payload:      payloadOf(jobID, phase),
		Labels:       labelsOf(jobID),
		Now:          now,
		Verdict:      retryIn(rc+1, time.Minute, now),
	}
}

// leasedFailure is the failure of a dispatched task, reported at now.
func leasedFailure(task store.Task, now time.Time) store.Failure {
	f := failure(task.JobID, task.Phase, task.RetryCount, now)
	f.LeaseID = task.LeaseID
	f.Payload = nil // workers echo the task; nil keeps the stored payload
	f.Labels = nil
	return f
}

// success is an unleased successful attempt that completes the job.
func success(jobID, phase string, rc uint32, now time.Time) store.Success {
	return store.Success{
		JobID:      jobID,
		Phase:      phase,
		RetryCount: rc,
		Output:     []byte(fmt.Sprintf(`{"%s_output":"s3://out/%s"}`, phase, jobID)),
		Payload:    payloadOf(jobID, phase),
		Labels:     labelsOf(jobID),
		Now:        now,
	}
}

// leasedSuccess is the success of a dispatched task, reported at now.
func leasedSuccess(task store.Task, now time.Time) store.Success {
	s := success(task.JobID, task.Phase, task.RetryCount, now)
	s.LeaseID = task.LeaseID
	s.Payload = nil
	s.Labels = nil
	return s
}

// failedAttempt is the attempt a failure records, given the payload the
// attempt ran with, its worker and its start.
func failedAttempt(f store.Failure, cycle uint32, payload []byte, worker string, started time.Time) store.Attempt {
	return store.Attempt{
		Cycle:        cycle,
		Phase:        f.Phase,
		RetryCount:   f.RetryCount,
		Status:       store.AttemptFailed,
		ErrorType:    f.ErrorType,
		ErrorMessage: f.ErrorMessage,
		HTTPStatus:   f.HTTPStatus,
		Payload:      payload,
		WorkerID:     worker,
		StartedAt:    started,
		FinishedAt:   f.Now,
		Verdict:      f.Verdict,
	}
}

// succeededAttempt is the attempt a success records.
func succeededAttempt(s store.Success, cycle uint32, payload []byte, worker string, started time.Time) store.Attempt {
	return store.Attempt{
		Cycle:      cycle,
		Phase:      s.Phase,
		RetryCount: s.RetryCount,
		Status:     store.AttemptSucceeded,
		Payload:    payload,
		Output:     s.Output,
		WorkerID:   worker,
		StartedAt:  started,
		FinishedAt: s.Now,
	}
}

func (h *harness) fail(f store.Failure) store.FailureResult {
	h.t.Helper()
	res, err := h.s.RecordFailure(h.ctx, f)
	require.NoError(h.t, err, "RecordFailure(%s %s #%d)", f.JobID, f.Phase, f.RetryCount)
	return res
}

func (h *harness) succeed(s store.Success) store.SuccessResult {
	h.t.Helper()
	res, err := h.s.RecordSuccess(h.ctx, s)
	require.NoError(h.t, err, "RecordSuccess(%s %s #%d)", s.JobID, s.Phase, s.RetryCount)
	return res
}

func (h *harness) job(id string) store.Job {
	h.t.Helper()
	j, err := h.s.GetJob(h.ctx, id)
	require.NoError(h.t, err, "GetJob(%q)", id)
	return j
}

// requireJob compares GetJob with want, whole.
func (h *harness) requireJob(want store.Job) {
	h.t.Helper()
	requireEqual(h.t, want, h.job(want.ID), "GetJob(%q)", want.ID)
}

func (h *harness) claim(now time.Time, limit int, phases ...string) []store.Task {
	h.t.Helper()
	tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
		Phases: phases, Limit: limit, Now: now, LeaseFor: leaseFor, WorkerID: "worker-1",
	})
	require.NoError(h.t, err, "Claim(%v at %v)", phases, now)
	return tasks
}

// claimOne claims the single due attempt of phase.
func (h *harness) claimOne(now time.Time, phase string) store.Task {
	h.t.Helper()
	tasks := h.claim(now, 10, phase)
	require.Len(h.t, tasks, 1, "Claim(%s at %v) should return exactly one task", phase, now)
	require.NotEmpty(h.t, tasks[0].LeaseID, "a claimed task must carry a lease id")
	return tasks[0]
}

func (h *harness) nextDue(phases ...string) (time.Time, bool) {
	h.t.Helper()
	due, ok, err := h.s.NextDue(h.ctx, phases)
	require.NoError(h.t, err, "NextDue(%v)", phases)
	return due, ok
}

func (h *harness) nextExpiry() (time.Time, bool) {
	h.t.Helper()
	exp, ok, err := h.s.NextLeaseExpiry(h.ctx)
	require.NoError(h.t, err, "NextLeaseExpiry")
	return exp, ok
}

func (h *harness) expired(now time.Time, limit int) []store.Lease {
	h.t.Helper()
	leases, err := h.s.ExpiredLeases(h.ctx, now, limit)
	require.NoError(h.t, err, "ExpiredLeases(%v, %d)", now, limit)
	return leases
}

// snapshot is the observable state of one job and of the schedule: what a
// refused or duplicate call must leave exactly as it was.
type snapshot struct {
	Job        store.Job
	NextDue    time.Time
	HasDue     bool
	NextExpiry time.Time
	HasExpiry  bool
	Stats      []store.PhaseStats
}

func (h *harness) snapshot(jobID string) snapshot {
	h.t.Helper()
	var sn snapshot
	sn.Job = h.job(jobID)
	sn.NextDue, sn.HasDue = h.nextDue(extraction, chunking, kgIngest)
	sn.NextExpiry, sn.HasExpiry = h.nextExpiry()
	sn.Stats = h.stats(store.StatsQuery{Since: at(-24 * time.Hour), Until: at(30 * 24 * time.Hour)})
	return sn
}

// requireUnchanged checks that the job and the schedule are as in before.
func (h *harness) requireUnchanged(before snapshot, what string) {
	h.t.Helper()
	requireEqual(h.t, before, h.snapshot(before.Job.ID), "state after %s", what)
}

// stats returns Stats sorted by phase, without all-zero rows.
//
// Reading: store.go does not say whether a phase with nothing in the window
// is listed with zero counters or left out, nor in which order phases come;
// the suite accepts both forms and any order.
func (h *harness) stats(q store.StatsQuery) []store.PhaseStats {
	h.t.Helper()
	got, err := h.s.Stats(h.ctx, q)
	require.NoError(h.t, err, "Stats(%+v)", q)
	var out []store.PhaseStats
	for _, ps := range got {
		if ps.Attempts == 0 && ps.Retries == 0 && ps.SuccessfulRetries == 0 && ps.GivenUp == 0 && len(ps.FailuresByType) == 0 {
			continue
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Phase < out[j].Phase })
	return out
}

// withoutAttempts is what RetryJob, CancelJob and ListJobs return for j.
func withoutAttempts(j store.Job) store.Job {
	j.Attempts = nil
	return j
}

// requireEqual fails with a (-want +got) diff when want and got differ.
func requireEqual(t *testing.T, want, got any, format string, args ...any) {
	t.Helper()
	if d := cmp.Diff(want, got, equate); d != "" {
		t.Fatalf("%s mismatch (-want +got):\n%s", fmt.Sprintf(format, args...), d)
	}
}

// requireErr checks that err wraps target.
func requireErr(t *testing.T, err, target error, format string, args ...any) {
	t.Helper()
	require.ErrorIs(t, err, target, fmt.Sprintf(format, args...))
}

// dueMicros is the instant a store keeps for a due time: rounded up to the
// microsecond (store.DueMicros).
func dueMicros(t time.Time) time.Time { return store.FromMicros(store.DueMicros(t)) }
