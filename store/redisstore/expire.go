package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// expireJobsScript deletes terminal jobs last updated before a cutoff, with
// their attempts and index entry. Each candidate is checked again: a job
// that was retried (no longer in this index) or updated since it was read
// stays. An index entry without its job is removed.
//
// KEYS[1+3i], KEYS[2+3i], KEYS[3+3i] for candidate i = 0, 1, …: its job
// hash {P}:j:<job>, attempts hash {P}:a:<job>, index {P}:idx:<bucket>:<phase>
// ARGV[1] cutoff, µs
// ARGV[2+3i], ARGV[3+3i], ARGV[4+3i] for candidate i: job id, the state
// digit of the index's bucket, the index's phase
// Returns the number of jobs deleted.
var expireJobsScript = newScript(`
local deleted = 0
for i = 0, #KEYS / 3 - 1 do
  local job, att, idx = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  local id, st, phase = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  local j = redis.call('HMGET', job, 'st', 'ph', 'ua')
  if not j[1] then
    redis.call('ZREM', idx, id)
  elseif j[1] == st and j[2] == phase and tonumber(j[3]) < tonumber(ARGV[1]) then
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

// Expire deletes terminal jobs last updated before now-JobRetention (with
// their attempts, payloads and index entries) and the stats hours that had
// ended by now-StatsRetention, in batches of 100 per script, at most
// Options.ExpireLimit jobs per call.
func (s *Store) Expire(ctx context.Context, now time.Time) (int, error) {
	removed, err := s.expireJobs(ctx, store.NowMicros(now.Add(-s.opts.JobRetention)))
	if err != nil {
		return removed, err
	}
	return removed, s.expireStats(ctx, now.Add(-s.opts.StatsRetention))
}

func (s *Store) expireJobs(ctx context.Context, cutoff int64) (int, error) {
	phases, err := s.client.SMembers(ctx, s.k.phases()).Result()
	if err != nil {
		return 0, s.wrap("expire", err)
	}
	removed := 0
	for _, tb := range terminalBuckets {
		for _, ph := range phases {
			idx := s.k.index(tb.b, ph)
			for removed < s.opts.ExpireLimit {
				batch := min(expireBatch, s.opts.ExpireLimit-removed)
				ids, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
					Key: idx, Start: "-inf", Stop: "(" + strconv.FormatInt(cutoff, 10), ByScore: true, Count: int64(batch),
				}).Result()
				if err != nil {
					return removed, s.wrap("expire", err)
				}
				if len(ids) == 0 {
					break
				}
				keys := make([]string, 0, 3*len(ids))
				args := make([]any, 0, 1+3*len(ids))
				args = append(args, cutoff)
				for _, id := range ids {
					keys = append(keys, s.k.job(id), s.k.attempts(id), idx)
					args = append(args, id, tb.state, ph)
				}
				n, err := expireJobsScript.Run(ctx, s.client, keys, args...).Int()
				if err != nil {
					return removed, s.wrap("expire", err)
				}
				removed += n
				if len(ids) < batch {
					break
				}
			}
		}
	}
	return removed, nil
}

// expireStats deletes the hours that ended at or before cutoff, at most
// Options.ExpireLimit of them per call.
func (s *Store) expireStats(ctx context.Context, cutoff time.Time) error {
	// Hour h covers [h, h+1h): it has ended by cutoff when h+1 <= hour(cutoff).
	last := statsHourOf(cutoff) - 1
	for deleted := 0; deleted < s.opts.ExpireLimit; deleted += expireBatch {
		hours, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
			Key: s.k.hours(), Start: "-inf", Stop: strconv.FormatInt(last, 10), ByScore: true, Count: expireBatch,
		}).Result()
		if err != nil {
			return s.wrap("expire stats", err)
		}
		if len(hours) == 0 {
			return nil
		}
		keys := []string{s.k.hours()}
		args := make([]any, 0, len(hours))
		for _, h := range hours {
			hour, err := strconv.ParseInt(h, 10, 64)
			if err != nil {
				return s.wrap("expire stats", fmt.Errorf("%w: bad member %q of %s", errCorrupt, h, s.k.hours()))
			}
			keys = append(keys, s.k.statsHour(hour))
			args = append(args, h)
		}
		if err := expireHoursScript.Run(ctx, s.client, keys, args...).Err(); err != nil {
			return s.wrap("expire stats", err)
		}
		if len(hours) < expireBatch {
			return nil
		}
	}
	return nil
}
