package boltstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// defaultPageSize applies when ListQuery.Limit is not positive.
const defaultPageSize = 50

// RetryJob implements store.Store.
func (s *Store) RetryJob(ctx context.Context, jobID, fromPhase string, now time.Time) (store.Job, error) {
	var (
		job     store.Job
		refusal error
		events  []store.Event
	)
	err := s.write(ctx, func(t *txn) error {
		job, refusal, events = store.Job{}, nil, nil
		j, err := t.job(jobID)
		if err != nil {
			return err
		}
		if j == nil {
			refusal = fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
			return nil
		}
		if j.State != store.StateFailed {
			refusal = fmt.Errorf("%w: job %q is %s", store.ErrJobNotFailed, jobID, j.State)
			return nil
		}
		phase := fromPhase
		if phase == "" {
			phase = j.LastFailedPhase
		}
		known, err := t.knowsPhase(jobID, phase)
		if err != nil {
			return err
		}
		if !known {
			refusal = fmt.Errorf("%w: job %q has no payload or attempt of phase %q", store.ErrUnknownPhase, jobID, phase)
			return nil
		}
		nowUS := store.NowMicros(now)
		j.State, j.Cycle, j.Phase = store.StateProcessing, j.Cycle+1, phase
		j.PendingPhase, j.PendingRetryCount, j.DueUS = phase, 0, store.DueMicros(now)
		// The new cycle has not ended: how the last one ended is in its
		// attempts (and LastFailed*).
		j.FinalError, j.FinalErrorType, j.TotalRetries = "", "", 0
		j.UpdatedUS = nowUS
		if err := t.schedule(jobID, j); err != nil {
			return err
		}
		if err := t.putJob(jobID, j); err != nil {
			return err
		}
		events = []store.Event{{Kind: store.EventScheduled, Phase: phase, DueAt: store.FromMicros(j.DueUS)}}
		job = toJob(jobID, j)
		return nil
	})
	if err != nil {
		return store.Job{}, fmt.Errorf("retry job %q: %w", jobID, err)
	}
	if refusal != nil {
		return store.Job{}, refusal
	}
	s.hub.publish(events)
	return job, nil
}

// knowsPhase reports whether the job has a stored payload or an attempt of phase.
func (t *txn) knowsPhase(jobID, phase string) (bool, error) {
	if phase == "" {
		return false, nil
	}
	if _, ok := t.payload(jobID, phase); ok {
		return true, nil
	}
	prefix := attemptsPrefix(jobID)
	cur := t.jobs.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		p, err := attemptKeyPhase(jobID, k)
		if err != nil {
			return false, err
		}
		if p == phase {
			return true, nil
		}
	}
	return false, nil
}

// CancelJob implements store.Store.
func (s *Store) CancelJob(ctx context.Context, jobID, reason string, now time.Time) (store.Job, error) {
	var (
		job     store.Job
		refusal error
		events  []store.Event
	)
	err := s.write(ctx, func(t *txn) error {
		job, refusal, events = store.Job{}, nil, nil
		j, err := t.job(jobID)
		if err != nil {
			return err
		}
		switch {
		case j == nil:
			refusal = fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
			return nil
		case j.State == store.StateCanceled:
			job = toJob(jobID, j)
			return nil
		case j.State == store.StateCompleted:
			refusal = fmt.Errorf("%w: job %q is completed", store.ErrJobTerminal, jobID)
			return nil
		}
		if j.PendingPhase != "" {
			if j.LeaseID != "" {
				events = append(events, store.Event{Kind: store.EventLeaseReleased, Phase: j.PendingPhase, LeaseID: j.LeaseID})
			}
			if err := t.unschedule(jobID, j); err != nil {
				return err
			}
			clearPending(j)
		}
		j.State, j.FinalError, j.UpdatedUS = store.StateCanceled, reason, store.NowMicros(now)
		if err := t.putJob(jobID, j); err != nil {
			return err
		}
		job = toJob(jobID, j)
		return nil
	})
	if err != nil {
		return store.Job{}, fmt.Errorf("cancel job %q: %w", jobID, err)
	}
	if refusal != nil {
		return store.Job{}, refusal
	}
	s.hub.publish(events)
	return job, nil
}

// GetJob implements store.Store.
func (s *Store) GetJob(ctx context.Context, jobID string) (store.Job, error) {
	var (
		job   store.Job
		found bool
	)
	err := s.view(ctx, func(t *txn) error {
		j, err := t.job(jobID)
		if err != nil || j == nil {
			return err
		}
		found = true
		job = toJob(jobID, j)
		var records []*attemptRecord
		prefix := attemptsPrefix(jobID)
		cur := t.jobs.Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			a, err := decodeAttempt(v)
			if err != nil {
				return fmt.Errorf("attempt of job %q: %w", jobID, err)
			}
			if a.PayloadRef {
				var ok bool
				if a.Payload, ok = t.payload(jobID, a.Phase); !ok {
					return fmt.Errorf("%w: attempt of job %q refers to the payload of phase %q, which is missing", errCorrupt, jobID, a.Phase)
				}
			}
			records = append(records, a)
		}
		// Keys order attempts by cycle and phase name; Seq is the order
		// they were recorded in.
		slices.SortFunc(records, func(a, b *attemptRecord) int { return compareUint(a.Seq, b.Seq) })
		job.Attempts = make([]store.Attempt, len(records))
		for i, a := range records {
			job.Attempts[i] = toAttempt(a)
		}
		return nil
	})
	if err != nil {
		return store.Job{}, fmt.Errorf("get job %q: %w", jobID, err)
	}
	if !found {
		return store.Job{}, fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
	}
	return job, nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// errBadCursor is returned for a ListQuery.Cursor this store did not make.
var errBadCursor = fmt.Errorf("%w: boltstore: invalid list cursor", store.ErrInvalidArgument)

// ListJobs implements store.Store. It walks the listing index of the
// queried state (or of every state, merging their ranges) from the most
// recently updated job backwards; the cursor is the listing key of the last
// job returned without its state byte, so a page starts right after it
// even when jobs share an update time.
func (s *Store) ListJobs(ctx context.Context, q store.ListQuery) (store.JobPage, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = defaultPageSize
	}
	state := q.State
	if q.InBackoff {
		if state != 0 && state != store.StateProcessing {
			return store.JobPage{}, ctx.Err()
		}
		state = store.StateProcessing
	}
	var after []byte
	if q.Cursor != "" {
		var err error
		if after, err = base64.RawURLEncoding.DecodeString(q.Cursor); err != nil || len(after) < 8 {
			return store.JobPage{}, fmt.Errorf("%w %q", errBadCursor, q.Cursor)
		}
	}
	states := listStates
	if state != 0 {
		states = []store.JobState{state}
	}
	var page store.JobPage
	err := s.view(ctx, func(t *txn) error {
		ranges := make([]listRange, len(states))
		for i, st := range states {
			ranges[i] = newListRange(t, st, after)
		}
		var lastKey []byte
		for {
			// The most recent entry of any range: keys without their
			// state byte order by update time, then job id.
			r := -1
			for i := range ranges {
				if ranges[i].k != nil && (r < 0 || bytes.Compare(ranges[i].k[1:], ranges[r].k[1:]) > 0) {
					r = i
				}
			}
			if r < 0 {
				return nil
			}
			k := ranges[r].k
			ranges[r].prev()
			if len(k) < 9 {
				return fmt.Errorf("%w: listing key %q is too short", errCorrupt, k)
			}
			id := string(k[9:])
			j, err := t.job(id)
			if err != nil {
				return err
			}
			if j == nil {
				return fmt.Errorf("%w: listing entry of missing job %q", errCorrupt, id)
			}
			if q.Phase != "" && j.Phase != q.Phase {
				continue
			}
			if q.InBackoff && !(j.PendingPhase != "" && j.LeaseID == "") {
				continue
			}
			if len(page.Jobs) == limit {
				// One more job matches: there is a next page.
				page.NextCursor = base64.RawURLEncoding.EncodeToString(lastKey[1:])
				return nil
			}
			page.Jobs = append(page.Jobs, toJob(id, j))
			lastKey = slices.Clone(k)
		}
	})
	if err != nil {
		return store.JobPage{}, fmt.Errorf("list jobs: %w", err)
	}
	return page, nil
}

// listStates are the states of the listing's ranges, for a ListJobs of
// every state.
var listStates = []store.JobState{store.StateProcessing, store.StateFailed, store.StateCompleted, store.StateCanceled}

// listRange walks one state's range of the listing backwards.
type listRange struct {
	state byte
	cur   *bolt.Cursor
	// k is the current key, nil once the range is behind the walk.
	k []byte
}

// newListRange starts at state's most recent entry, or at the first entry
// before after (a cursor: the listing key of the last job returned, without
// its state byte).
func newListRange(t *txn, state store.JobState, after []byte) listRange {
	r := listRange{state: byte(state), cur: t.listing.Cursor()}
	target := []byte{byte(state) + 1} // just past the range
	if after != nil {
		target = append([]byte{byte(state)}, after...)
	}
	if k, _ := r.cur.Seek(target); k == nil {
		r.k, _ = r.cur.Last()
	} else {
		r.k, _ = r.cur.Prev()
	}
	r.check()
	return r
}

func (r *listRange) prev() {
	r.k, _ = r.cur.Prev()
	r.check()
}

// check ends the walk when it left the range.
func (r *listRange) check() {
	if len(r.k) == 0 || r.k[0] != r.state {
		r.k = nil
	}
}
