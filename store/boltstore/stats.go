package boltstore

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
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

// Expire implements store.Store: terminal jobs updated longer than the job
// retention ago, then the least recently updated terminal jobs beyond
// MaxTerminalJobs, in chunks of expireChunk per transaction (so that one
// transaction never holds the writer lock long); then the stats counters
// whose whole hour is older than the stats retention. It never stops early
// (More stays false): the chunks bound each transaction, not the call.
func (s *Store) Expire(ctx context.Context, now time.Time) (store.ExpireResult, error) {
	var res store.ExpireResult
	jobCutoff := store.NowMicros(now) - s.opts.JobRetention.Microseconds()
	for {
		n, err := s.expireChunk(ctx, func(t *txn) ([]string, error) {
			var ids []string
			for _, state := range terminalStates {
				cur := t.listing.Cursor()
				prefix := []byte{byte(state)}
				for k, _ := cur.Seek(prefix); k != nil && k[0] == byte(state) && len(ids) < expireChunk; k, _ = cur.Next() {
					if len(k) < 9 {
						return nil, fmt.Errorf("%w: listing key %q is too short", errCorrupt, k)
					}
					if readTime(k[1:]) >= jobCutoff {
						break
					}
					ids = append(ids, string(k[9:]))
				}
			}
			return ids, nil
		})
		res.ByAge += n
		if err != nil {
			return res, err
		}
		if n < expireChunk {
			break
		}
	}
	if s.opts.MaxTerminalJobs != store.NoCountBound {
		// Counting walks the terminal ranges of the listing: O(terminal
		// jobs) per janitor run, in a read transaction that blocks no
		// writer. A kept counter would make it O(1) at the price of a
		// write on every state change; a run every 10 minutes does not
		// need that.
		var total int
		err := s.view(ctx, func(t *txn) error {
			for _, state := range terminalStates {
				cur := t.listing.Cursor()
				for k, _ := cur.Seek([]byte{byte(state)}); k != nil && k[0] == byte(state); k, _ = cur.Next() {
					total++
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("expire jobs: %w", err)
		}
		for excess := total - s.opts.MaxTerminalJobs; excess > 0; {
			want := min(excess, expireChunk)
			n, err := s.expireChunk(ctx, func(t *txn) ([]string, error) { return oldestTerminal(t, want) })
			res.ByCount += n
			if err != nil {
				return res, err
			}
			if n == 0 {
				break
			}
			excess -= n
		}
	}
	hours, err := s.expireStats(ctx, store.NowMicros(now)-s.opts.StatsRetention.Microseconds())
	res.StatsHours = hours
	return res, err
}

// terminalStates are the states whose jobs Expire removes.
var terminalStates = []store.JobState{store.StateFailed, store.StateCompleted, store.StateCanceled}

// expireChunk deletes, in one transaction, the jobs pick chooses, and
// returns how many.
func (s *Store) expireChunk(ctx context.Context, pick func(*txn) ([]string, error)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := update(s.db, func(tx *bolt.Tx) error {
		n = 0
		t := newTxn(tx)
		ids, err := pick(t)
		if err != nil {
			return err
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
		return 0, fmt.Errorf("expire jobs: %w", s.wrap(err))
	}
	return n, nil
}

// oldestTerminal returns the ids of the want least recently updated
// terminal jobs, merging the listing's three terminal state ranges (each is
// ordered by update time).
func oldestTerminal(t *txn, want int) ([]string, error) {
	type entry struct {
		us int64
		id string
	}
	var all []entry
	for _, state := range terminalStates {
		cur := t.listing.Cursor()
		n := 0
		for k, _ := cur.Seek([]byte{byte(state)}); k != nil && k[0] == byte(state) && n < want; k, _ = cur.Next() {
			if len(k) < 9 {
				return nil, fmt.Errorf("%w: listing key %q is too short", errCorrupt, k)
			}
			all = append(all, entry{readTime(k[1:]), string(k[9:])})
			n++
		}
	}
	slices.SortFunc(all, func(a, b entry) int {
		if a.us != b.us {
			return cmp.Compare(a.us, b.us)
		}
		return strings.Compare(a.id, b.id)
	})
	ids := make([]string, 0, min(want, len(all)))
	for _, e := range all[:min(want, len(all))] {
		ids = append(ids, e.id)
	}
	return ids, nil
}

// expireStats deletes the counters of the hours that ended at or before
// cutoff (µs) and returns how many distinct hours it deleted.
func (s *Store) expireStats(ctx context.Context, cutoff int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	hour := store.StatsBucket.Microseconds()
	hours := 0
	err := update(s.db, func(tx *bolt.Tx) error {
		hours = 0
		b := tx.Bucket(bucketStats)
		var old [][]byte
		last := int64(0)
		cur := b.Cursor()
		for k, _ := cur.First(); len(k) >= 8 && readTime(k)+hour <= cutoff; k, _ = cur.Next() {
			if h := readTime(k); len(old) == 0 || h != last {
				hours++
				last = h
			}
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
		return 0, fmt.Errorf("expire stats: %w", s.wrap(err))
	}
	return hours, nil
}
