package redisstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// expireJobsScript deletes terminal jobs, with their attempts and index
// entry, each only if it is still what Expire read: in that bucket's state
// and phase, and last updated before its bound. A job that was retried (no
// longer terminal) or updated since it was read stays. An index entry
// without its job is removed.
//
// KEYS[1+3i], KEYS[2+3i], KEYS[3+3i] for candidate i = 0, 1, …: its job
// hash {P}:j:<job>, attempts hash {P}:a:<job>, index {P}:idx:<bucket>:<phase>
// ARGV[1+4i] … ARGV[4+4i] for candidate i: job id, the state digit of the
// index's bucket, the index's phase, and the bound in µs: the job goes only
// if its update time is below it (the age cutoff; for the count bound, one
// more than the update time Expire read)
// Returns the number of jobs deleted.
var expireJobsScript = newScript(`
local deleted = 0
for i = 0, #KEYS / 3 - 1 do
  local job, att, idx = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  local id, st, phase, bound = ARGV[1 + 4 * i], ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i]
  local j = redis.call('HMGET', job, 'st', 'ph', 'ua')
  if not j[1] then
    redis.call('ZREM', idx, id)
  elseif j[1] == st and j[2] == phase and tonumber(j[3]) < tonumber(bound) then
    redis.call('DEL', job, att)
    redis.call('ZREM', idx, id)
    deleted = deleted + 1
  end
end
return deleted
`)

// expireHoursScript deletes hourly stats counters.
//
// KEYS[1] stats hour set {P}:hours; KEYS[2..] the stats hashes {P}:stats:<hour>
// ARGV[1..] the hours, in KEYS order
// Returns the number of hours deleted.
var expireHoursScript = newScript(`
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 1])
end
return #KEYS - 1
`)

// terminalBuckets are the buckets Expire deletes from, with their state digit.
var terminalBuckets = []struct {
	b     bucket
	state string
}{
	{bucketFailed, "2"}, {bucketCompleted, "3"}, {bucketCanceled, "4"},
}

// expireCandidate is a terminal job Expire read from an index.
type expireCandidate struct {
	id      string
	state   string // the index's state digit
	phase   string // the index's phase
	idx     string // the index key
	updated int64  // its score: the job's update time, µs
}

// Expire deletes terminal jobs last updated before now-JobRetention, then
// the least recently updated terminal jobs beyond MaxTerminalJobs (with
// their attempts, payloads and index entries), and the stats hours that had
// ended by now-StatsRetention; in batches of 100 per script, at most
// Options.ExpireLimit jobs per call (More is then set).
func (s *Store) Expire(ctx context.Context, now time.Time) (store.ExpireResult, error) {
	var res store.ExpireResult
	phases, err := s.client.SMembers(ctx, s.k.phases()).Result()
	if err != nil {
		return res, s.wrap("expire", err)
	}
	slices.Sort(phases)
	if res.ByAge, res.More, err = s.expireByAge(ctx, phases, store.NowMicros(now.Add(-s.opts.JobRetention))); err != nil {
		return res, err
	}
	if !res.More && s.opts.MaxTerminalJobs != store.NoCountBound {
		if res.ByCount, res.More, err = s.expireByCount(ctx, phases, s.opts.ExpireLimit-res.ByAge); err != nil {
			return res, err
		}
	}
	res.StatsHours, err = s.expireStats(ctx, now.Add(-s.opts.StatsRetention))
	return res, err
}

// expireByAge deletes terminal jobs updated before cutoff, at most
// ExpireLimit; more reports that the limit stopped it.
func (s *Store) expireByAge(ctx context.Context, phases []string, cutoff int64) (removed int, more bool, err error) {
	for _, tb := range terminalBuckets {
		for _, ph := range phases {
			idx := s.k.index(tb.b, ph)
			for {
				if removed >= s.opts.ExpireLimit {
					return removed, true, nil
				}
				batch := min(expireBatch, s.opts.ExpireLimit-removed)
				ids, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
					Key: idx, Start: "-inf", Stop: "(" + strconv.FormatInt(cutoff, 10), ByScore: true, Count: int64(batch),
				}).Result()
				if err != nil {
					return removed, false, s.wrap("expire", err)
				}
				cands := make([]expireCandidate, len(ids))
				for i, id := range ids {
					cands[i] = expireCandidate{id: id, state: tb.state, phase: ph, idx: idx, updated: cutoff - 1}
				}
				n, err := s.deleteJobs(ctx, cands)
				removed += n
				if err != nil {
					return removed, false, err
				}
				if len(ids) < batch {
					break
				}
			}
		}
	}
	return removed, false, nil
}

// expireByCount deletes the least recently updated terminal jobs while more
// than MaxTerminalJobs are kept, at most limit of them. It counts the
// terminal indexes, reads the oldest entries of each, and merges them, so
// that the oldest go first whatever their state and phase.
func (s *Store) expireByCount(ctx context.Context, phases []string, limit int) (removed int, more bool, err error) {
	if limit <= 0 || len(phases) == 0 {
		return 0, limit <= 0, nil
	}
	var idxs []expireCandidate // one per index: its key, state and phase
	for _, tb := range terminalBuckets {
		for _, ph := range phases {
			idxs = append(idxs, expireCandidate{state: tb.state, phase: ph, idx: s.k.index(tb.b, ph)})
		}
	}
	pipe := s.client.Pipeline()
	cards := make([]*redis.IntCmd, len(idxs))
	for i, ix := range idxs {
		cards[i] = pipe.ZCard(ctx, ix.idx)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, false, s.wrap("expire", err)
	}
	var total int64
	for _, c := range cards {
		total += c.Val()
	}
	excess := total - int64(s.opts.MaxTerminalJobs)
	if excess <= 0 {
		return 0, false, nil
	}
	want := int(min(excess, int64(limit)))

	pipe = s.client.Pipeline()
	heads := make([]*redis.ZSliceCmd, len(idxs))
	for i, ix := range idxs {
		heads[i] = pipe.ZRangeWithScores(ctx, ix.idx, 0, int64(want-1))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, false, s.wrap("expire", err)
	}
	var cands []expireCandidate
	for i, h := range heads {
		for _, z := range h.Val() {
			c := idxs[i]
			c.id, c.updated = z.Member.(string), int64(z.Score)
			cands = append(cands, c)
		}
	}
	slices.SortFunc(cands, func(a, b expireCandidate) int {
		return cmp.Or(cmp.Compare(a.updated, b.updated), cmp.Compare(a.id, b.id))
	})
	cands = cands[:min(len(cands), want)]
	for len(cands) > 0 {
		batch := cands[:min(len(cands), expireBatch)]
		cands = cands[len(batch):]
		n, err := s.deleteJobs(ctx, batch)
		removed += n
		if err != nil {
			return removed, false, err
		}
	}
	return removed, excess > int64(limit), nil
}

// deleteJobs runs expireJobsScript on candidates; each goes only if it was
// updated before candidate.updated+1 (that is, not since it was read).
func (s *Store) deleteJobs(ctx context.Context, cands []expireCandidate) (int, error) {
	if len(cands) == 0 {
		return 0, nil
	}
	keys := make([]string, 0, 3*len(cands))
	args := make([]any, 0, 4*len(cands))
	for _, c := range cands {
		keys = append(keys, s.k.job(c.id), s.k.attempts(c.id), c.idx)
		args = append(args, c.id, c.state, c.phase, c.updated+1)
	}
	n, err := expireJobsScript.Run(ctx, s.client, keys, args...).Int()
	if err != nil {
		return 0, s.wrap("expire", err)
	}
	return n, nil
}

// expireStats deletes the hours that ended at or before cutoff, at most
// Options.ExpireLimit of them per call, and returns how many it deleted.
func (s *Store) expireStats(ctx context.Context, cutoff time.Time) (int, error) {
	// Hour h covers [h, h+1h): it has ended by cutoff when h+1 <= hour(cutoff).
	last := statsHourOf(cutoff) - 1
	deleted := 0
	for deleted < s.opts.ExpireLimit {
		hours, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
			Key: s.k.hours(), Start: "-inf", Stop: strconv.FormatInt(last, 10), ByScore: true, Count: expireBatch,
		}).Result()
		if err != nil {
			return deleted, s.wrap("expire stats", err)
		}
		if len(hours) == 0 {
			return deleted, nil
		}
		keys := []string{s.k.hours()}
		args := make([]any, 0, len(hours))
		for _, h := range hours {
			hour, err := strconv.ParseInt(h, 10, 64)
			if err != nil {
				return deleted, s.wrap("expire stats", fmt.Errorf("%w: bad member %q of %s", errCorrupt, h, s.k.hours()))
			}
			keys = append(keys, s.k.statsHour(hour))
			args = append(args, h)
		}
		n, err := expireHoursScript.Run(ctx, s.client, keys, args...).Int()
		if err != nil {
			return deleted, s.wrap("expire stats", err)
		}
		deleted += n
		if len(hours) < expireBatch {
			return deleted, nil
		}
	}
	return deleted, nil
}
