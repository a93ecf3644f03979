package boltstore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// expireChunk bounds how many jobs one Expire transaction deletes, so that
// a large backlog never holds the writer lock (and every report) for long.
const expireChunk = 256

// Stats implements store.Store: the hourly counters whose hour starts in
// [Since rounded down to the hour, Until), summed per phase, sorted by phase.
func (s *Store) Stats(ctx context.Context, q store.StatsQuery) ([]store.PhaseStats, error) {
	sinceUS := hourOf(store.NowMicros(q.Since))
	untilUS := store.NowMicros(q.Until)
	byPhase := map[string]*store.PhaseStats{}
	err := s.view(ctx, func(t *txn) error {
		cur := t.stats.Cursor()
		for k, v := cur.Seek(appendTime(nil, sinceUS)); k != nil; k, v = cur.Next() {
			if len(k) < 8 {
				return fmt.Errorf("%w: stats key %q is too short", errCorrupt, k)
			}
			if readTime(k) >= untilUS {
				break
			}
			phase := string(k[8:])
			if q.Phase != "" && phase != q.Phase {
				continue
			}
			rec, err := decodeStats(v)
			if err != nil {
				return err
			}
			ps := byPhase[phase]
			if ps == nil {
				ps = &store.PhaseStats{Phase: phase, FailuresByType: map[string]uint64{}}
				byPhase[phase] = ps
			}
			ps.Attempts += rec.Attempts
			ps.Retries += rec.Retries
			ps.SuccessfulRetries += rec.SuccessfulRetries
			ps.GivenUp += rec.GivenUp
			for typ, n := range rec.FailuresByType {
				ps.FailuresByType[typ] += n
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	out := make([]store.PhaseStats, 0, len(byPhase))
	for _, phase := range slices.Sorted(maps.Keys(byPhase)) {
		out = append(out, *byPhase[phase])
	}
	return out, nil
}

// Expire implements store.Store. Jobs go in chunks of expireChunk per
// transaction; stats counters go when their whole hour is older than the
// stats retention.
func (s *Store) Expire(ctx context.Context, now time.Time) (int, error) {
	jobCutoff := store.NowMicros(now) - s.opts.JobRetention.Microseconds()
	statsCutoff := store.NowMicros(now) - s.opts.StatsRetention.Microseconds()
	removed := 0
	for {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		n := 0
		err := s.db.Update(func(tx *bolt.Tx) error {
			n = 0
			t := newTxn(tx)
			var ids []string
			for _, state := range []store.JobState{store.StateFailed, store.StateCompleted, store.StateCanceled} {
				prefix := []byte{byte(state)}
				cur := t.listing.Cursor()
				for k, _ := cur.Seek(prefix); k != nil && k[0] == byte(state) && len(ids) < expireChunk; k, _ = cur.Next() {
					if len(k) < 9 {
						return fmt.Errorf("%w: listing key %q is too short", errCorrupt, k)
					}
					if readTime(k[1:]) >= jobCutoff {
						break
					}
					ids = append(ids, string(k[9:]))
				}
			}
			for _, id := range ids {
				j, err := t.job(id)
				if err != nil {
					return err
				}
				if j == nil {
					return fmt.Errorf("%w: listing entry of missing job %q", errCorrupt, id)
				}
				if err := t.deleteJob(id, j); err != nil {
					return err
				}
			}
			n = len(ids)
			return nil
		})
		if err != nil {
			return removed, fmt.Errorf("expire jobs: %w", s.wrap(err))
		}
		removed += n
		if n < expireChunk {
			break
		}
	}
	hour := store.StatsBucket.Microseconds()
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStats)
		var old [][]byte
		cur := b.Cursor()
		for k, _ := cur.First(); k != nil && len(k) >= 8 && readTime(k)+hour <= statsCutoff; k, _ = cur.Next() {
			old = append(old, slices.Clone(k))
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return removed, fmt.Errorf("expire stats: %w", s.wrap(err))
	}
	return removed, nil
}
