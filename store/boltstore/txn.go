package boltstore

import (
	"bytes"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// txn is a transaction with its buckets at hand, and the record-level
// operations that keep the indexes in step with the records.
type txn struct {
	tx *bolt.Tx
	// jobs holds every job's record, attempts and payloads (keys.go).
	jobs    *bolt.Bucket
	due     *bolt.Bucket
	leases  *bolt.Bucket
	listing *bolt.Bucket
	stats   *bolt.Bucket
}

func newTxn(tx *bolt.Tx) *txn {
	t := &txn{
		tx:      tx,
		jobs:    tx.Bucket(bucketJob),
		due:     tx.Bucket(bucketDue),
		leases:  tx.Bucket(bucketLeases),
		listing: tx.Bucket(bucketListing),
		stats:   tx.Bucket(bucketStats),
	}
	if tx.Writable() {
		// Keys made of the current time are appended in key order: a
		// page split at bbolt's default fill of 50% would leave every
		// page of these indexes half empty for good (the listing took
		// 255 bytes per job at 0.5, 140 at 0.9, BenchmarkFootprint). The
		// due index is not one of them: jittered delays insert all over
		// a phase's range, and there a high fill leaves pages full and
		// nearly empty in turn (105 bytes per retry at 0.5, 204 at 0.9
		// with 20% jitter).
		t.listing.FillPercent = orderedFill
		t.leases.FillPercent = orderedFill
	}
	return t
}

// orderedFill is the fill of a page that bbolt splits in an index written
// in key order.
const orderedFill = 0.9

// job reads a job; nil when there is none.
func (t *txn) job(id string) (*jobRecord, error) {
	if id == "" {
		return nil, nil
	}
	v := t.jobs.Get(jobKey(id))
	if v == nil {
		return nil, nil
	}
	j, err := decodeJob(v)
	if err != nil {
		return nil, fmt.Errorf("job %q: %w", id, err)
	}
	j.listed, j.listState, j.listUS = true, j.State, j.UpdatedUS
	return j, nil
}

// putJob writes a job and moves its listing entries when its state or
// update time changed.
func (t *txn) putJob(id string, j *jobRecord) error {
	if id == "" {
		return fmt.Errorf("empty job id")
	}
	if !j.listed || j.listState != j.State || j.listUS != j.UpdatedUS {
		if j.listed {
			if err := t.listing.Delete(listingKey(j.listState, j.listUS, id)); err != nil {
				return err
			}
		}
		if err := t.listing.Put(listingKey(j.State, j.UpdatedUS, id), nil); err != nil {
			return err
		}
		j.listed, j.listState, j.listUS = true, j.State, j.UpdatedUS
	}
	return t.jobs.Put(jobKey(id), encodeJob(j))
}

// deleteJob removes a job with its attempts, payloads and index entries.
func (t *txn) deleteJob(id string, j *jobRecord) error {
	if j.PendingPhase != "" {
		if err := t.unschedule(id, j); err != nil {
			return err
		}
	}
	if j.listed {
		if err := t.listing.Delete(listingKey(j.listState, j.listUS, id)); err != nil {
			return err
		}
	}
	// The record, the attempts and the payloads.
	return deletePrefix(t.jobs, jobPrefix(id))
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// schedule puts the job's pending attempt in the due index.
func (t *txn) schedule(id string, j *jobRecord) error {
	return t.due.Put(dueKey(j.PendingPhase, j.DueUS, id), nil)
}

// unschedule takes the job's pending attempt out of the due index or, when
// it is leased, out of the lease index. The job record is left as it is.
func (t *txn) unschedule(id string, j *jobRecord) error {
	if j.LeaseID != "" {
		return t.leases.Delete(leaseKey(j.LeaseExpiresUS, id))
	}
	return t.due.Delete(dueKey(j.PendingPhase, j.DueUS, id))
}

// clearPending forgets the job's pending attempt and lease, after
// unschedule.
func clearPending(j *jobRecord) {
	j.PendingPhase, j.PendingRetryCount, j.DueUS = "", 0, 0
	clearLease(j)
}

func clearLease(j *jobRecord) {
	j.LeaseID, j.LeasedUS, j.LeaseExpiresUS, j.WorkerID = "", 0, 0, ""
}

// payload returns the stored payload of a job's phase and whether there is one.
func (t *txn) payload(id, phase string) ([]byte, bool) {
	v := t.jobs.Get(payloadKey(id, phase))
	if len(v) == 0 {
		return nil, false
	}
	return slices.Clone(v[1:]), true
}

// putPayload stores p as the payload of the job's phase. When it replaces
// a different payload, the attempts that share the old one (PayloadRef)
// get a copy of it first.
func (t *txn) putPayload(id, phase string, p []byte) error {
	key := payloadKey(id, phase)
	if old := t.jobs.Get(key); len(old) > 0 {
		if bytes.Equal(old[1:], p) {
			return nil
		}
		if err := t.unshare(id, phase, slices.Clone(old[1:])); err != nil {
			return err
		}
	}
	v := make([]byte, 0, 1+len(p))
	v = append(append(v, payloadPresent), p...)
	return t.jobs.Put(key, v)
}

// unshare gives the attempts of the job's phase that share its stored
// payload, old, a copy of it.
func (t *txn) unshare(id, phase string, old []byte) error {
	type update struct {
		key []byte
		a   *attemptRecord
	}
	var updates []update
	prefix := attemptsPrefix(id)
	cur := t.jobs.Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		p, err := attemptKeyPhase(id, k)
		if err != nil {
			return err
		}
		if p != phase {
			continue
		}
		a, err := decodeAttempt(v)
		if err != nil {
			return fmt.Errorf("attempt of job %q: %w", id, err)
		}
		if a.PayloadRef {
			a.PayloadRef, a.Payload = false, old
			updates = append(updates, update{slices.Clone(k), a})
		}
	}
	for _, u := range updates {
		if err := t.jobs.Put(u.key, encodeAttempt(u.a)); err != nil {
			return err
		}
	}
	return nil
}

// attempt reads one attempt; nil when it was never recorded.
func (t *txn) attempt(key []byte) (*attemptRecord, error) {
	v := t.jobs.Get(key)
	if v == nil {
		return nil, nil
	}
	return decodeAttempt(v)
}

// count adds one finished attempt to the hourly counters of its phase.
func (t *txn) count(a *attemptRecord) error {
	key := statsKey(hourOf(a.FinishedUS), a.Phase)
	rec := &statsRecord{}
	if v := t.stats.Get(key); v != nil {
		var err error
		if rec, err = decodeStats(v); err != nil {
			return err
		}
	}
	rec.Attempts++
	if a.RetryCount > 0 {
		rec.Retries++
		if a.Status == store.AttemptSucceeded {
			rec.SuccessfulRetries++
		}
	}
	if a.Status == store.AttemptFailed {
		if a.Decision == store.DecisionGiveUp {
			rec.GivenUp++
		}
		if rec.FailuresByType == nil {
			rec.FailuresByType = map[string]uint64{}
		}
		rec.FailuresByType[statsErrorType(rec.FailuresByType, a.ErrorType)]++
	}
	return t.stats.Put(key, encodeStats(rec))
}

// statsErrorType is the type a failure counts under in an hour's counters
// of a phase: its own, or store.OtherErrorType once the counters hold
// store.MaxStatsErrorTypes other types (so that one record, rewritten by
// every report, stays small).
func statsErrorType(counted map[string]uint64, typ string) string {
	if _, ok := counted[typ]; ok || typ == store.OtherErrorType {
		return typ
	}
	n := len(counted)
	if _, ok := counted[store.OtherErrorType]; ok {
		n--
	}
	if n >= store.MaxStatsErrorTypes {
		return store.OtherErrorType
	}
	return typ
}

// toJob converts a record to a store.Job (without attempts).
func toJob(id string, j *jobRecord) store.Job {
	return store.Job{
		ID:                   id,
		State:                j.State,
		Phase:                j.Phase,
		Cycle:                j.Cycle,
		Labels:               maps.Clone(j.Labels),
		PendingPhase:         j.PendingPhase,
		PendingRetryCount:    j.PendingRetryCount,
		DueAt:                store.FromMicros(j.DueUS),
		LeaseID:              j.LeaseID,
		LeaseExpiresAt:       store.FromMicros(j.LeaseExpiresUS),
		WorkerID:             j.WorkerID,
		LastFailedPhase:      j.LastFailedPhase,
		LastFailedRetryCount: j.LastFailedRetryCount,
		LastFailedAt:         store.FromMicros(j.LastFailedUS),
		LastErrorType:        j.LastErrorType,
		LastError:            j.LastError,
		FinalError:           j.FinalError,
		FinalErrorType:       j.FinalErrorType,
		TotalRetries:         j.TotalRetries,
		CreatedAt:            store.FromMicros(j.CreatedUS),
		UpdatedAt:            store.FromMicros(j.UpdatedUS),
	}
}

// toAttempt converts an attempt record.
func toAttempt(a *attemptRecord) store.Attempt {
	return store.Attempt{
		Cycle:        a.Cycle,
		Phase:        a.Phase,
		RetryCount:   a.RetryCount,
		Status:       a.Status,
		ErrorType:    a.ErrorType,
		ErrorMessage: a.ErrorMessage,
		HTTPStatus:   a.HTTPStatus,
		Payload:      a.Payload,
		Output:       a.Output,
		WorkerID:     a.WorkerID,
		StartedAt:    store.FromMicros(a.StartedUS),
		FinishedAt:   store.FromMicros(a.FinishedUS),
		Verdict:      a.verdict(),
	}
}

func (a *attemptRecord) verdict() store.Verdict {
	return store.Verdict{
		Decision:       a.Decision,
		Retryable:      a.Retryable,
		Reason:         a.Reason,
		NextRetryCount: a.NextRetryCount,
		Delay:          durationNS(a.DelayNS),
		DueAt:          store.FromMicros(a.VerdictDueUS),
	}
}
