package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/retryd/retryd/store"
)

// retryJobScript starts a new cycle of a failed job: the phase is scheduled
// due now with retry_count 0 and that phase's stored payload.
//
// KEYS[1] job hash       {P}:j:<job>
// KEYS[2] attempts hash  {P}:a:<job>
// KEYS[3] due set        {P}:due:<ARGV[3]>
// KEYS[4] index before   {P}:idx:f:<ARGV[4]>
// KEYS[5] index after    {P}:idx:p:<ARGV[3]>
// KEYS[6] phase set      {P}:phases
// ARGV[1] job id; ARGV[2] from phase, "" for the most recent failure's;
// ARGV[3] the phase the caller resolved; ARGV[4] the job's phase it read;
// ARGV[5] now as a due time, µs; ARGV[6] now, µs; ARGV[7] events channel
// Returns {OK, job hash as HGETALL, last failure record or false};
// {NOT_FOUND}; {NOT_FAILED, state}; {UNKNOWN_PHASE, phase}; {MOVED, phase}.
var retryJobScript = newScript(`
local job, att, id = KEYS[1], KEYS[2], ARGV[1]
local j = redis.call('HMGET', job, 'st', 'ph', 'cy', 'lf', 'ua')
if not j[1] then return {NOT_FOUND} end
if j[1] ~= '2' then return {NOT_FAILED, j[1]} end
local target = ARGV[2]
if target == '' then target = string.match(j[4] or '', '^%d+:%d+:(.*)$') or '' end
if target ~= ARGV[3] or j[2] ~= ARGV[4] then return {MOVED, j[2]} end
if redis.call('HEXISTS', job, 'p:' .. target) == 0 then
  local known = false
  for _, f in ipairs(redis.call('HKEYS', att)) do
    if string.match(f, '^%d+:%d+:(.*)$') == target then known = true break end
  end
  if not known then return {UNKNOWN_PHASE, target} end
end
local cy = tostring(tonumber(j[3]) + 1)
redis.call('HSET', job, 'st', '1', 'ph', target, 'cy', cy, 'ua', ARGV[6],
  'pd', ns(target) .. ns('0') .. ns(ARGV[5]))
redis.call('HDEL', job, 'fe', 'ft', 'tr')
redis.call('ZADD', KEYS[3], ARGV[5], id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZADD', KEYS[5], ARGV[6], id)
if target ~= j[2] then redis.call('SADD', KEYS[6], target) end
redis.call('PUBLISH', ARGV[7], 's' .. ns(target) .. ns(ARGV[5]))
return {OK, redis.call('HGETALL', job), j[4] and redis.call('HGET', att, j[4]) or false}
`)

// RetryJob starts a new cycle of a failed job from fromPhase ("" = the
// phase of its most recent failed attempt).
func (s *Store) RetryJob(ctx context.Context, jobID, fromPhase string, now time.Time) (store.Job, error) {
	for range maxMovedAttempts {
		// The keys depend on the job's phase and the phase to run; read them,
		// and let the script check that they are still so.
		h, err := s.client.HMGet(ctx, s.k.job(jobID), "ph", "lf").Result()
		if err != nil {
			return store.Job{}, s.wrap("retry job", err)
		}
		ph, _ := h[0].(string)
		lf, _ := h[1].(string)
		target := fromPhase
		if target == "" {
			if _, _, p, err := parseAttemptField(lf); err == nil {
				target = p
			}
		}
		res, err := s.run(ctx, "retry job", retryJobScript,
			[]string{s.k.job(jobID), s.k.attempts(jobID), s.k.due(target), s.k.index(bucketFailed, ph),
				s.k.index(bucketProcessing, target), s.k.phases()},
			jobID, fromPhase, target, ph, dueOf(now), microsOf(now), s.k.events())
		if err != nil {
			return store.Job{}, err
		}
		code, err := replyCode(res)
		if err != nil {
			return store.Job{}, s.wrap("retry job", err)
		}
		switch code {
		case codeOK:
			if err := s.durable(ctx, "retry job"); err != nil {
				return store.Job{}, err
			}
			return s.jobFromReply(jobID, res, "retry job")
		case codeMoved:
			continue
		case codeNotFound:
			return store.Job{}, fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
		case codeNotFailed:
			return store.Job{}, fmt.Errorf("%w: job %q is %s", store.ErrJobNotFailed, jobID, stateName(replyString(res, 1)))
		case codeUnknownPhase:
			return store.Job{}, fmt.Errorf("%w: job %q has no payload or attempt of phase %q", store.ErrUnknownPhase, jobID, replyString(res, 1))
		default:
			return store.Job{}, fmt.Errorf("redisstore: retry job %q: unexpected script result %d", jobID, code)
		}
	}
	return store.Job{}, fmt.Errorf("redisstore: retry job %q: it kept changing while being retried", jobID)
}

// cancelJobScript cancels a processing or failed job, dropping its pending
// attempt; a canceled job is returned as it is.
//
// KEYS[1] job hash       {P}:j:<job>
// KEYS[2] attempts hash  {P}:a:<job>
// KEYS[3] due set        {P}:due:<ARGV[3]>
// KEYS[4] lease set      {P}:leases
// KEYS[5] index before   {P}:idx:<ARGV[4]>:<ARGV[3]>
// KEYS[6] index after    {P}:idx:x:<ARGV[3]>
// ARGV[1] job id; ARGV[2] reason; ARGV[3] the job's phase the caller read;
// ARGV[4] the bucket (keys.go) the caller derived; ARGV[5] now, µs;
// ARGV[6] events channel
// Returns {OK, job hash as HGETALL, last failure record or false};
// {NOT_FOUND}; {TERMINAL, state}; {MOVED, phase, bucket}.
var cancelJobScript = newScript(`
local job, att, id = KEYS[1], KEYS[2], ARGV[1]
local j = redis.call('HMGET', job, 'st', 'ph', 'pd', 'lf')
if not j[1] then return {NOT_FOUND} end
if j[1] == '3' then return {TERMINAL, j[1]} end
if j[1] ~= '4' then
  local b = bucket(j[1])
  if j[2] ~= ARGV[3] or b ~= ARGV[4] then return {MOVED, j[2], b} end
  if j[3] and j[3] ~= '' then
    local p = fields(j[3])
    redis.call('ZREM', KEYS[3], id)
    if p[4] then
      redis.call('ZREM', KEYS[4], id)
      redis.call('PUBLISH', ARGV[6], 'r' .. ns(p[4]))
    end
    redis.call('HDEL', job, 'pd')
  end
  redis.call('HSET', job, 'st', '4', 'fe', ARGV[2], 'ua', ARGV[5])
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZADD', KEYS[6], ARGV[5], id)
end
return {OK, redis.call('HGETALL', job), j[4] and redis.call('HGET', att, j[4]) or false}
`)

// CancelJob cancels a processing or failed job, dropping its pending attempt.
func (s *Store) CancelJob(ctx context.Context, jobID, reason string, now time.Time) (store.Job, error) {
	for range maxMovedAttempts {
		h, err := s.client.HMGet(ctx, s.k.job(jobID), "st", "ph").Result()
		if err != nil {
			return store.Job{}, s.wrap("cancel job", err)
		}
		st, _ := h[0].(string)
		ph, _ := h[1].(string)
		b := bucketOf(st)
		res, err := s.run(ctx, "cancel job", cancelJobScript,
			[]string{s.k.job(jobID), s.k.attempts(jobID), s.k.due(ph), s.k.leases(),
				s.k.index(b, ph), s.k.index(bucketCanceled, ph)},
			jobID, reason, ph, string(b), microsOf(now), s.k.events())
		if err != nil {
			return store.Job{}, err
		}
		code, err := replyCode(res)
		if err != nil {
			return store.Job{}, s.wrap("cancel job", err)
		}
		switch code {
		case codeOK:
			if err := s.durable(ctx, "cancel job"); err != nil {
				return store.Job{}, err
			}
			return s.jobFromReply(jobID, res, "cancel job")
		case codeMoved:
			continue
		case codeNotFound:
			return store.Job{}, fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
		case codeTerminal:
			return store.Job{}, fmt.Errorf("%w: job %q is completed and cannot be canceled", store.ErrJobTerminal, jobID)
		default:
			return store.Job{}, fmt.Errorf("redisstore: cancel job %q: unexpected script result %d", jobID, code)
		}
	}
	return store.Job{}, fmt.Errorf("redisstore: cancel job %q: it kept changing while being canceled", jobID)
}

// bucketOf is the Go twin of the scripts' bucket function.
func bucketOf(state string) bucket {
	switch state {
	case "1":
		return bucketProcessing
	case "2":
		return bucketFailed
	case "3":
		return bucketCompleted
	}
	return bucketCanceled
}

// jobFromReply decodes {OK, HGETALL job, last failure record} into a Job.
func (s *Store) jobFromReply(jobID string, res []any, op string) (store.Job, error) {
	if len(res) < 3 {
		return store.Job{}, s.wrap(op, fmt.Errorf("%w: short script reply", errCorrupt))
	}
	flat, ok := res[1].([]any)
	if !ok || len(flat)%2 != 0 {
		return store.Job{}, s.wrap(op, fmt.Errorf("%w: bad job in script reply: %T", errCorrupt, res[1]))
	}
	h := make(map[string]string, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		h[k] = v
	}
	lf, _ := res[2].(string)
	j, err := decodeJob(jobID, h, lf)
	if err != nil {
		return store.Job{}, s.wrap(op, err)
	}
	return j, nil
}
