package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/retryd/retryd/store"
)

func durationNS(ns int64) time.Duration { return time.Duration(ns) }

// report is what RecordFailure and RecordSuccess have in common.
type report struct {
	jobID        string
	phase        string
	retry        uint32
	leaseID      string
	leaseExpired bool
	payload      []byte
	labels       map[string]string
	startedAt    time.Time
	now          time.Time
}

// checked is the outcome of the package doc's checks 1–5 for a report.
type checked struct {
	job *jobRecord
	// recorded is the attempt when it was already recorded (check 2).
	recorded *attemptRecord
	// refusal is the error of the first check that failed.
	refusal error
}

// check runs checks 1–5 of the store package doc, in that order. It
// changes nothing; a new job is returned unsaved.
func (t *txn) check(r report) (checked, error) {
	j, err := t.job(r.jobID)
	if err != nil {
		return checked{}, err
	}
	// 1. job absent
	if j == nil {
		if r.leaseID != "" {
			return checked{refusal: fmt.Errorf("%w: job %q does not exist (lease %q)", store.ErrLeaseNotHeld, r.jobID, r.leaseID)}, nil
		}
		nowUS := store.NowMicros(r.now)
		return checked{job: &jobRecord{State: store.StateProcessing, Cycle: 1, CreatedUS: nowUS}}, nil
	}
	// 2. attempt already recorded in the job's cycle
	a, err := t.attempt(attemptKey(r.jobID, j.Cycle, r.phase, r.retry))
	if err != nil {
		return checked{}, fmt.Errorf("attempt of job %q: %w", r.jobID, err)
	}
	if a != nil {
		return checked{job: j, recorded: a}, nil
	}
	// 3. terminal job
	if j.State != store.StateProcessing {
		return checked{refusal: fmt.Errorf("%w: job %q is %s", store.ErrJobTerminal, r.jobID, j.State)}, nil
	}
	// 4. the named lease must be the job's current lease of that attempt
	if r.leaseID != "" {
		if j.LeaseID != r.leaseID || j.PendingPhase != r.phase || j.PendingRetryCount != r.retry {
			return checked{refusal: fmt.Errorf("%w: lease %q is not the lease of job %q %s #%d",
				store.ErrLeaseNotHeld, r.leaseID, r.jobID, r.phase, r.retry)}, nil
		}
		if r.leaseExpired && j.LeaseExpiresUS > store.NowMicros(r.now) {
			return checked{refusal: fmt.Errorf("%w: lease %q of job %q runs until %v",
				store.ErrLeaseActive, r.leaseID, r.jobID, store.FromMicros(j.LeaseExpiresUS))}, nil
		}
		return checked{job: j}, nil
	}
	// 5. unleased report while retryd holds a pending attempt
	if j.PendingPhase != "" {
		return checked{refusal: fmt.Errorf("%w: job %q has %s #%d pending; report it with the lease of its Dispatch task",
			store.ErrAttemptPending, r.jobID, j.PendingPhase, j.PendingRetryCount)}, nil
	}
	return checked{job: j}, nil
}

// record applies the common part of an accepted report: the attempt (its
// payload, worker and start), the end of the lease, the job's phase, labels
// and stored payload, and the stats. It returns the lease it ended, if any.
func (t *txn) record(r report, j *jobRecord, a *attemptRecord) (endedLease string, err error) {
	nowUS := store.NowMicros(r.now)
	// The attempt ran with the phase's stored payload: the report's, stored
	// now, or the one stored before. It refers to it (PayloadRef) rather
	// than keeping a copy.
	if r.payload != nil {
		if err := t.putPayload(r.jobID, r.phase, r.payload); err != nil {
			return "", err
		}
		a.PayloadRef = true
	} else {
		a.PayloadRef = len(t.jobs.Get(payloadKey(r.jobID, r.phase))) > 0
	}
	a.Cycle, a.Phase, a.RetryCount = j.Cycle, r.phase, r.retry
	a.FinishedUS = nowUS
	switch {
	case !r.startedAt.IsZero():
		a.StartedUS = store.NowMicros(r.startedAt)
	case r.leaseID != "":
		a.StartedUS = j.LeasedUS
	default:
		a.StartedUS = nowUS
	}
	if r.leaseID != "" {
		a.WorkerID = j.WorkerID
		endedLease = j.LeaseID
		if err := t.unschedule(r.jobID, j); err != nil {
			return "", err
		}
		clearPending(j)
	}
	j.AttemptSeq++
	a.Seq = j.AttemptSeq
	if err := t.jobs.Put(attemptKey(r.jobID, j.Cycle, r.phase, r.retry), encodeAttempt(a)); err != nil {
		return "", err
	}
	if err := t.count(a); err != nil {
		return "", err
	}
	j.Phase = r.phase
	if r.labels != nil {
		j.Labels = r.labels
	}
	j.UpdatedUS = nowUS
	return endedLease, nil
}

// RecordFailure implements store.Store.
func (s *Store) RecordFailure(ctx context.Context, f store.Failure) (store.FailureResult, error) {
	r := report{
		jobID: f.JobID, phase: f.Phase, retry: f.RetryCount, leaseID: f.LeaseID, leaseExpired: f.LeaseExpired,
		payload: f.Payload, labels: f.Labels, startedAt: f.StartedAt, now: f.Now,
	}
	var (
		res     store.FailureResult
		refusal error
		events  []store.Event
	)
	err := s.write(ctx, func(t *txn) error {
		res, refusal, events = store.FailureResult{}, nil, nil
		c, err := t.check(r)
		if err != nil || c.refusal != nil {
			refusal = c.refusal
			return err
		}
		if c.recorded != nil {
			if c.recorded.Status != store.AttemptFailed {
				refusal = fmt.Errorf("%w: job %q %s #%d (cycle %d) was recorded as succeeded",
					store.ErrConflict, f.JobID, f.Phase, f.RetryCount, c.recorded.Cycle)
				return nil
			}
			res = store.FailureResult{Verdict: c.recorded.verdict(), Duplicate: true}
			return nil
		}
		j := c.job
		if f.LeaseID == "" && f.Verdict.Decision == store.DecisionRetry {
			// A retry scheduled below an attempt already recorded would
			// come round to it, and no report of it could be accepted.
			if later, ok := t.laterAttempt(f.JobID, j.Cycle, f.Phase, f.RetryCount); ok {
				refusal = store.OutOfOrder(f.JobID, f.Phase, f.RetryCount, later)
				return nil
			}
		}
		a := &attemptRecord{
			Status:         store.AttemptFailed,
			ErrorType:      f.ErrorType,
			ErrorMessage:   f.ErrorMessage,
			HTTPStatus:     f.HTTPStatus,
			Decision:       f.Verdict.Decision,
			Retryable:      f.Verdict.Retryable,
			Reason:         f.Verdict.Reason,
			NextRetryCount: f.Verdict.NextRetryCount,
			DelayNS:        int64(f.Verdict.Delay),
		}
		if !f.Verdict.DueAt.IsZero() {
			a.VerdictDueUS = store.DueMicros(f.Verdict.DueAt)
		}
		ended, err := t.record(r, j, a)
		if err != nil {
			return err
		}
		if ended != "" {
			events = append(events, store.Event{Kind: store.EventLeaseReleased, Phase: f.Phase, LeaseID: ended})
		}
		j.LastFailedPhase, j.LastFailedRetryCount, j.LastFailedUS = f.Phase, f.RetryCount, a.FinishedUS
		j.LastErrorType, j.LastError = f.ErrorType, f.ErrorMessage
		if f.Verdict.Decision == store.DecisionRetry {
			j.PendingPhase, j.PendingRetryCount, j.DueUS = f.Phase, f.Verdict.NextRetryCount, a.VerdictDueUS
			if err := t.schedule(f.JobID, j); err != nil {
				return err
			}
			events = append(events, store.Event{Kind: store.EventScheduled, Phase: f.Phase, DueAt: store.FromMicros(j.DueUS)})
		} else {
			j.State = store.StateFailed
			j.FinalError, j.FinalErrorType, j.TotalRetries = f.ErrorMessage, f.ErrorType, f.RetryCount
		}
		res = store.FailureResult{Verdict: a.verdict()}
		return t.putJob(f.JobID, j)
	})
	if err != nil {
		return store.FailureResult{}, fmt.Errorf("record failure of job %q: %w", f.JobID, err)
	}
	if refusal != nil {
		return store.FailureResult{}, refusal
	}
	s.hub.publish(events)
	return res, nil
}

// RecordSuccess implements store.Store.
func (s *Store) RecordSuccess(ctx context.Context, sc store.Success) (store.SuccessResult, error) {
	r := report{
		jobID: sc.JobID, phase: sc.Phase, retry: sc.RetryCount, leaseID: sc.LeaseID,
		payload: sc.Payload, labels: sc.Labels, startedAt: sc.StartedAt, now: sc.Now,
	}
	var (
		res     store.SuccessResult
		refusal error
		events  []store.Event
	)
	err := s.write(ctx, func(t *txn) error {
		res, refusal, events = store.SuccessResult{}, nil, nil
		c, err := t.check(r)
		if err != nil || c.refusal != nil {
			refusal = c.refusal
			return err
		}
		if c.recorded != nil {
			if c.recorded.Status != store.AttemptSucceeded {
				refusal = fmt.Errorf("%w: job %q %s #%d (cycle %d) was recorded as failed",
					store.ErrConflict, sc.JobID, sc.Phase, sc.RetryCount, c.recorded.Cycle)
				return nil
			}
			res = store.SuccessResult{State: c.recorded.ResultState, Duplicate: true}
			return nil
		}
		j := c.job
		a := &attemptRecord{Status: store.AttemptSucceeded, Output: sc.Output}
		if sc.NextPhase == "" {
			a.ResultState = store.StateCompleted
		} else {
			a.ResultState = store.StateProcessing
		}
		ended, err := t.record(r, j, a)
		if err != nil {
			return err
		}
		if ended != "" {
			events = append(events, store.Event{Kind: store.EventLeaseReleased, Phase: sc.Phase, LeaseID: ended})
		}
		if sc.NextPhase == "" {
			j.State = store.StateCompleted
		} else {
			j.Phase = sc.NextPhase
			if sc.NextPayload != nil {
				if err := t.putPayload(sc.JobID, sc.NextPhase, sc.NextPayload); err != nil {
					return err
				}
			}
		}
		res = store.SuccessResult{State: j.State}
		return t.putJob(sc.JobID, j)
	})
	if err != nil {
		return store.SuccessResult{}, fmt.Errorf("record success of job %q: %w", sc.JobID, err)
	}
	if refusal != nil {
		return store.SuccessResult{}, refusal
	}
	s.hub.publish(events)
	return res, nil
}

// laterAttempt returns the retry_count of a recorded attempt of the job's
// phase in cycle that is later than retry, if any.
func (t *txn) laterAttempt(id string, cycle uint32, phase string, retry uint32) (uint32, bool) {
	from := attemptKey(id, cycle, phase, retry+1)
	prefix := from[:len(from)-4]
	k, _ := t.jobs.Cursor().Seek(from)
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(from) {
		return 0, false
	}
	return binary.BigEndian.Uint32(k[len(prefix):]), true
}
