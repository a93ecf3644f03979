package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// dueEntry is one entry of the due index.
type dueEntry struct {
	phase string
	dueUS int64
	jobID string
}

// Claim implements store.Store.
func (s *Store) Claim(ctx context.Context, c store.ClaimRequest) ([]store.Task, error) {
	if c.Limit <= 0 || len(c.Phases) == 0 {
		return nil, ctx.Err()
	}
	phases := slices.Compact(slices.Sorted(slices.Values(c.Phases)))
	nowUS := store.NowMicros(c.Now)
	expiresUS := store.DueMicros(c.Now.Add(c.LeaseFor))
	// Look before queueing for a commit: a claim that finds nothing due
	// (the dispatcher claims again whenever a lease is released, due or
	// not) then costs a read transaction, not a wait for the commit in
	// flight and a write transaction of its own. A retry that falls due
	// between this look and a later claim is that claim's, as it would be
	// had this claim run a moment earlier.
	var anyDue bool
	err := s.view(ctx, func(t *txn) (err error) {
		anyDue, err = t.anyDue(phases, nowUS)
		return err
	})
	if err != nil || !anyDue {
		if err != nil {
			err = fmt.Errorf("claim %v: %w", c.Phases, err)
		}
		return nil, err
	}
	var tasks []store.Task
	err = s.write(ctx, func(t *txn) error {
		tasks = nil
		// The first Limit due entries of each phase, merged by due time.
		var due []dueEntry
		for _, phase := range phases {
			prefix := duePrefix(phase)
			cur := t.due.Cursor()
			n := 0
			for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && n < c.Limit; k, _ = cur.Next() {
				rest := k[len(prefix):]
				if len(rest) < 8 {
					return fmt.Errorf("%w: due key %q is too short", errCorrupt, k)
				}
				dueUS := readTime(rest)
				if dueUS > nowUS {
					break
				}
				due = append(due, dueEntry{phase: phase, dueUS: dueUS, jobID: string(rest[8:])})
				n++
			}
		}
		slices.SortFunc(due, func(a, b dueEntry) int {
			return cmp.Or(cmp.Compare(a.dueUS, b.dueUS), cmp.Compare(a.jobID, b.jobID), cmp.Compare(a.phase, b.phase))
		})
		if len(due) > c.Limit {
			due = due[:c.Limit]
		}
		for _, e := range due {
			j, err := t.job(e.jobID)
			if err != nil {
				return err
			}
			if j == nil || j.PendingPhase != e.phase || j.DueUS != e.dueUS || j.LeaseID != "" {
				return fmt.Errorf("%w: due entry of job %q (%s at %d) does not match the job", errCorrupt, e.jobID, e.phase, e.dueUS)
			}
			if err := t.due.Delete(dueKey(e.phase, e.dueUS, e.jobID)); err != nil {
				return err
			}
			j.LeaseID = rand.Text()
			j.LeasedUS, j.LeaseExpiresUS, j.WorkerID = nowUS, expiresUS, c.WorkerID
			if err := t.leases.Put(leaseKey(expiresUS, e.jobID), nil); err != nil {
				return err
			}
			if err := t.putJob(e.jobID, j); err != nil {
				return err
			}
			payload, _ := t.payload(e.jobID, e.phase)
			tasks = append(tasks, store.Task{
				JobID:          e.jobID,
				Phase:          e.phase,
				RetryCount:     j.PendingRetryCount,
				Cycle:          j.Cycle,
				Payload:        payload,
				Labels:         maps.Clone(j.Labels),
				LeaseID:        j.LeaseID,
				LeaseExpiresAt: store.FromMicros(expiresUS),
				DueAt:          store.FromMicros(e.dueUS),
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim %v: %w", c.Phases, err)
	}
	return tasks, nil
}

// anyDue reports whether one of phases (sorted) has an attempt due at or
// before nowUS.
func (t *txn) anyDue(phases []string, nowUS int64) (bool, error) {
	cur := t.due.Cursor()
	for _, phase := range phases {
		due, ok, err := firstDue(cur, phase)
		if err != nil {
			return false, err
		}
		if ok && due <= nowUS {
			return true, nil
		}
	}
	return false, nil
}

// firstDue is the earliest due time (Unix µs) of phase's scheduled
// attempts, read off the due index (ordered by phase, then time); false
// when the phase has none.
func firstDue(cur *bolt.Cursor, phase string) (int64, bool, error) {
	prefix := duePrefix(phase)
	k, _ := cur.Seek(prefix)
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return 0, false, nil
	}
	if len(k) < len(prefix)+8 {
		return 0, false, fmt.Errorf("%w: due key %q is too short", errCorrupt, k)
	}
	return readTime(k[len(prefix):]), true, nil
}

// leased reads the job and checks that leaseID is its current lease.
func (t *txn) leased(jobID, leaseID string) (*jobRecord, error, error) {
	j, err := t.job(jobID)
	if err != nil {
		return nil, nil, err
	}
	if j == nil || leaseID == "" || j.LeaseID != leaseID {
		return nil, fmt.Errorf("%w: lease %q is not held on job %q", store.ErrLeaseNotHeld, leaseID, jobID), nil
	}
	return j, nil, nil
}

// ExtendLease implements store.Store.
func (s *Store) ExtendLease(ctx context.Context, jobID, leaseID string, until, now time.Time) (time.Time, error) {
	var (
		expiresUS int64
		refusal   error
	)
	err := s.write(ctx, func(t *txn) error {
		expiresUS, refusal = 0, nil
		j, ref, err := t.leased(jobID, leaseID)
		if err != nil || ref != nil {
			refusal = ref
			return err
		}
		if j.LeaseExpiresUS <= store.NowMicros(now) {
			refusal = fmt.Errorf("%w: lease %q of job %q expired at %v", store.ErrLeaseNotHeld, leaseID, jobID, store.FromMicros(j.LeaseExpiresUS))
			return nil
		}
		expiresUS = j.LeaseExpiresUS
		if untilUS := store.DueMicros(until); untilUS > expiresUS {
			if err := t.leases.Delete(leaseKey(j.LeaseExpiresUS, jobID)); err != nil {
				return err
			}
			if err := t.leases.Put(leaseKey(untilUS, jobID), nil); err != nil {
				return err
			}
			j.LeaseExpiresUS, expiresUS = untilUS, untilUS
			return t.putJob(jobID, j)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("extend lease of job %q: %w", jobID, err)
	}
	if refusal != nil {
		return time.Time{}, refusal
	}
	return store.FromMicros(expiresUS), nil
}

// ReturnLease implements store.Store.
func (s *Store) ReturnLease(ctx context.Context, jobID, leaseID string) error {
	var (
		refusal error
		events  []store.Event
	)
	err := s.write(ctx, func(t *txn) error {
		refusal, events = nil, nil
		j, ref, err := t.leased(jobID, leaseID)
		if err != nil || ref != nil {
			refusal = ref
			return err
		}
		if err := t.unschedule(jobID, j); err != nil {
			return err
		}
		clearLease(j)
		if err := t.schedule(jobID, j); err != nil {
			return err
		}
		events = []store.Event{
			{Kind: store.EventLeaseReleased, Phase: j.PendingPhase, LeaseID: leaseID},
			{Kind: store.EventScheduled, Phase: j.PendingPhase, DueAt: store.FromMicros(j.DueUS)},
		}
		return t.putJob(jobID, j)
	})
	if err != nil {
		return fmt.Errorf("return lease of job %q: %w", jobID, err)
	}
	if refusal != nil {
		return refusal
	}
	s.hub.publish(events)
	return nil
}

// ExpiredLeases implements store.Store.
func (s *Store) ExpiredLeases(ctx context.Context, now time.Time, limit int) ([]store.Lease, error) {
	nowUS := store.NowMicros(now)
	var leases []store.Lease
	err := s.view(ctx, func(t *txn) error {
		cur := t.leases.Cursor()
		for k, _ := cur.First(); k != nil && len(leases) < limit; k, _ = cur.Next() {
			if len(k) < 8 {
				return fmt.Errorf("%w: lease key %q is too short", errCorrupt, k)
			}
			if readTime(k) > nowUS {
				break
			}
			id := string(k[8:])
			j, err := t.job(id)
			if err != nil {
				return err
			}
			if j == nil || j.LeaseID == "" {
				return fmt.Errorf("%w: lease entry of job %q has no lease", errCorrupt, id)
			}
			leases = append(leases, store.Lease{
				JobID:      id,
				LeaseID:    j.LeaseID,
				Phase:      j.PendingPhase,
				RetryCount: j.PendingRetryCount,
				Cycle:      j.Cycle,
				WorkerID:   j.WorkerID,
				LeasedAt:   store.FromMicros(j.LeasedUS),
				ExpiresAt:  store.FromMicros(j.LeaseExpiresUS),
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expired leases: %w", err)
	}
	return leases, nil
}

// NextDue implements store.Store.
func (s *Store) NextDue(ctx context.Context, phases []string) (time.Time, bool, error) {
	var (
		first int64
		found bool
	)
	err := s.view(ctx, func(t *txn) error {
		first, found = 0, false
		cur := t.due.Cursor()
		for _, phase := range phases {
			due, ok, err := firstDue(cur, phase)
			if err != nil {
				return err
			}
			if ok && (!found || due < first) {
				first, found = due, true
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next due: %w", err)
	}
	if !found {
		return time.Time{}, false, nil
	}
	return store.FromMicros(first), true, nil
}

// NextLeaseExpiry implements store.Store.
func (s *Store) NextLeaseExpiry(ctx context.Context) (time.Time, bool, error) {
	var (
		first int64
		found bool
	)
	err := s.view(ctx, func(t *txn) error {
		k, _ := t.leases.Cursor().First()
		if k == nil {
			return nil
		}
		if len(k) < 8 {
			return fmt.Errorf("%w: lease key %q is too short", errCorrupt, k)
		}
		first, found = readTime(k), true
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next lease expiry: %w", err)
	}
	if !found {
		return time.Time{}, false, nil
	}
	return store.FromMicros(first), true, nil
}

// Backlog counts scheduled (unleased) attempts per phase, and finds each
// phase's earliest due time (its first key: the due index is ordered by
// phase, then time), for the backlog metrics. It walks the due index, so a
// scrape costs time in proportion to the backlog; a scrape every 15 s of a
// million pending retries reads about 50 MB of keys.
func (s *Store) Backlog(ctx context.Context) (map[string]store.PhaseBacklog, error) {
	out := make(map[string]store.PhaseBacklog)
	err := s.view(ctx, func(t *txn) error {
		clear(out)
		return t.due.ForEach(func(k, _ []byte) error {
			n, w := binary.Uvarint(k)
			if w <= 0 || uint64(len(k)-w) < n+8 {
				return fmt.Errorf("%w: due key %q is malformed", errCorrupt, k)
			}
			phase := string(k[w : w+int(n)])
			b, seen := out[phase]
			if !seen {
				b.OldestDue = store.FromMicros(readTime(k[w+int(n):]))
			}
			b.Scheduled++
			out[phase] = b
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("backlog: %w", err)
	}
	return out, nil
}
