package redisstore

import (
	"context"
	"fmt"

	"github.com/retryd/retryd/store"
)

// reportLua holds the helpers of the two report scripts that spare the
// attempts-hash probe (the duplicate check) when it cannot find anything.
//
// A report of the job's pending attempt, under its lease, is of an attempt
// that was scheduled and not yet recorded, so the probe would find nothing;
// the checks that follow it (terminal, lease) pass too, since a job with a
// leased attempt is processing. "Not yet recorded" would have one
// exception if the scripts allowed it: a worker may report retry_counts
// out of order without a lease (say #2 succeeds with next_phase the same
// phase, then #0 fails and would schedule #1, whose retry is #2). Check 6
// of the store package doc refuses that failure, with the field below;
// the probe logic stays exact without relying on it. Only unleased
// reports can record an attempt ahead of the pending one: a leased report records the pending attempt itself, and the
// attempts of a phase recorded under leases follow, one retry_count after
// the other, an unleased one, so a run of them reaching an attempt recorded
// earlier would have to pass that run's unleased first attempt, which is
// probed. An unleased report of retry_count 0 is never ahead either (a
// pending attempt of retry_count 0 is a RetryJob's, in a cycle with
// nothing recorded). So the job hash keeps, per phase, the highest
// retry_count of 1 or more recorded without a lease in the current cycle
// ("r:<phase>" = "<cycle>:<retry_count>", absent in the common case of
// workers reporting only their original attempt unleased), and the probe
// is spared for a leased report of the pending attempt above it. The probe
// still runs for every unleased report and for reports that carry a
// payload (it also reads the stored payload they are compared with).
const reportLua = `
-- unrecorded: the report (lease, phase, rc) is of the pending attempt p,
-- which no unleased attempt of the phase recorded in cycle cy reaches (hr
-- is the job's "r:<phase>" field).
local function unrecorded(p, lease, phase, rc, cy, hr)
  if lease == '' or p[4] ~= lease or p[1] ~= phase or p[2] ~= rc then return false end
  if not hr then return true end
  local c = string.find(hr, ':', 1, true)
  return string.sub(hr, 1, c - 1) ~= cy or tonumber(string.sub(hr, c + 1)) < tonumber(rc)
end
-- highest adds "r:<phase>" to the job's HSET arguments when an unleased
-- report records the phase's highest retry_count (1 or more) of cycle cy.
local function highest(hset, lease, phase, rc, cy, hr)
  if lease ~= '' or rc == '0' then return end
  if hr then
    local c = string.find(hr, ':', 1, true)
    if string.sub(hr, 1, c - 1) == cy and tonumber(string.sub(hr, c + 1)) >= tonumber(rc) then return end
  end
  table.insert(hset, 'r:' .. phase); table.insert(hset, cy .. ':' .. rc)
end
`

// recordFailureScript applies a failed attempt and its verdict, after the
// checks of the store package doc, in their order.
//
// KEYS[1] job hash             {P}:j:<job>
// KEYS[2] attempts hash        {P}:a:<job>
// KEYS[3] due set of the phase {P}:due:<ARGV[2]>
// KEYS[4] lease set            {P}:leases
// KEYS[5] index before         {P}:idx:p:<ARGV[21]> (an existing job that passes the checks is processing)
// KEYS[6] index after          {P}:idx:p:<ARGV[2]> (retry) or {P}:idx:f:<ARGV[2]> (give up)
// KEYS[7] phase set            {P}:phases
// KEYS[8] stats hash of the hour of ARGV[6]  {P}:stats:<hour>
// KEYS[9] stats hour set       {P}:hours
// ARGV[1]  job id
// ARGV[2]  phase
// ARGV[3]  retry_count
// ARGV[4]  lease id, "" when unleased
// ARGV[5]  "1" for the reaper's report of an expired lease
// ARGV[6]  now, µs
// ARGV[7]  started at, µs, "0" when unset
// ARGV[8]  "1" when a payload is given, ARGV[9] the payload
// ARGV[10] "1" when labels are given, ARGV[11] the encoded labels
// ARGV[12] "1" retry, "2" give up
// ARGV[13] next retry_count, ARGV[14] its due time, µs (retry)
// ARGV[15] the attempt record's first fields (codec.go)
// ARGV[16] error type, ARGV[17] error message
// ARGV[18] stats field, ARGV[19] stats hour
// ARGV[20] events channel
// ARGV[21] the phase the caller expects the job to be in (for KEYS[5])
// ARGV[22] "1" to add the phase to KEYS[7] (phaseCache, keys.go)
// Returns {OK}; {DUPLICATE, record}; {CONFLICT}; {TERMINAL, state};
// {LEASE_NOT_HELD}; {LEASE_ACTIVE, expiry}; {PENDING, phase, retry_count};
// {OUT_OF_ORDER, retry_count}: an unleased failure whose retry would be
// scheduled below that recorded attempt of the phase;
// {MOVED, phase}: KEYS[5] is not the job's index, nothing was done.
var recordFailureScript = newScript(reportLua + `
local job, att = KEYS[1], KEYS[2]
local id, phase, rc, lease, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local j = redis.call('HMGET', job, 'st', 'ph', 'cy', 'pd', 'n', 'nb', 'p:' .. phase, 'r:' .. phase)
local st, ph, cy, pd, n, nb, blob = j[1], j[2], j[3], j[4], j[5], j[6], j[7]
if pd == '' then pd = false end
local p = pd and fields(pd) or {}
local cur = false
if not st then
  if lease ~= '' then return {LEASE_NOT_HELD} end
  cy = '1'
end
local afield = cy .. ':' .. rc .. ':' .. phase
if st and not (ARGV[8] ~= '1' and unrecorded(p, lease, phase, rc, cy, j[8])) then
  local a = redis.call('HMGET', att, afield, '#' .. (blob or ''))
  if a[1] then
    if first(a[1]) == '1' then return {DUPLICATE, a[1]} end
    return {CONFLICT}
  end
  cur = a[2]
end
if st then
  if st ~= '1' then return {TERMINAL, st} end
  if lease ~= '' then
    if p[4] ~= lease or p[1] ~= phase or p[2] ~= rc then return {LEASE_NOT_HELD} end
    if ARGV[5] == '1' and tonumber(p[5]) > tonumber(now) then return {LEASE_ACTIVE, p[5]} end
  elseif pd then
    return {PENDING, p[1], p[2]}
  elseif ARGV[12] == '1' and j[8] then
    -- A retry scheduled below an attempt already recorded would come
    -- round to it, and no report of it could be accepted.
    local c = string.find(j[8], ':', 1, true)
    if string.sub(j[8], 1, c - 1) == cy and tonumber(string.sub(j[8], c + 1)) > tonumber(rc) then
      return {OUT_OF_ORDER, string.sub(j[8], c + 1)}
    end
  end
  if ph ~= ARGV[21] then return {MOVED, ph} end
end

local hset = {'ph', phase, 'ua', now, 'lf', afield}
highest(hset, lease, phase, rc, cy, j[8])
local hdel = {}
local aset = {}
if ARGV[8] == '1' and ARGV[9] ~= cur then
  nb = tostring((tonumber(nb) or 0) + 1)
  blob = nb
  aset = {'#' .. nb, ARGV[9]}
  table.insert(hset, 'nb'); table.insert(hset, nb)
  table.insert(hset, 'p:' .. phase); table.insert(hset, nb)
end
local seq = tostring((tonumber(n) or 0) + 1)
table.insert(hset, 'n'); table.insert(hset, seq)
local started, worker = ARGV[7], ''
if lease ~= '' then
  worker = p[6]
  if started == '0' then started = p[7] end
elseif started == '0' then
  started = now
end
table.insert(aset, afield)
table.insert(aset, ARGV[15] .. ns(seq) .. ns(started) .. ns(worker) .. ns(blob or ''))
redis.call('HSET', att, unpack(aset))

if not st then
  for _, v in ipairs({'cy', '1', 'ca', now}) do table.insert(hset, v) end
end
if ARGV[10] == '1' then
  if ARGV[11] == '' then table.insert(hdel, 'lb')
  else table.insert(hset, 'lb'); table.insert(hset, ARGV[11]) end
end
local events = ''
if lease ~= '' then
  redis.call('ZREM', KEYS[4], id)
  events = 'r' .. ns(lease)
end
if ARGV[12] == '1' then
  for _, v in ipairs({'st', '1', 'pd', ns(phase) .. ns(ARGV[13]) .. ns(ARGV[14])}) do table.insert(hset, v) end
  redis.call('ZADD', KEYS[3], ARGV[14], id)
  events = events .. 's' .. ns(phase) .. ns(ARGV[14])
else
  for _, v in ipairs({'st', '2', 'fe', ARGV[17], 'ft', ARGV[16], 'tr', rc}) do table.insert(hset, v) end
  -- An empty pd is "nothing pending", set with the other fields rather
  -- than deleted by a command of its own.
  if pd then table.insert(hset, 'pd'); table.insert(hset, '') end
end
redis.call('HSET', job, unpack(hset))
if #hdel > 0 then redis.call('HDEL', job, unpack(hdel)) end
-- The same index (a retry in the job's phase) is re-scored by the ZADD.
if st and KEYS[5] ~= KEYS[6] then redis.call('ZREM', KEYS[5], id) end
redis.call('ZADD', KEYS[6], now, id)
if ARGV[22] == '1' then redis.call('SADD', KEYS[7], phase) end
if redis.call('HINCRBY', KEYS[8], ARGV[18], 1) == 1 then
  redis.call('ZADD', KEYS[9], ARGV[19], ARGV[19])
  capTypes(KEYS[8], ARGV[18])
end
if events ~= '' then redis.call('PUBLISH', ARGV[20], events) end
return {OK}
`)

// RecordFailure applies a failed attempt and its verdict in one script.
func (s *Store) RecordFailure(ctx context.Context, f store.Failure) (store.FailureResult, error) {
	var outcome byte = 'r'
	after := bucketProcessing
	if f.Verdict.Decision != store.DecisionRetry {
		outcome, after = 'g', bucketFailed
	}
	hour := statsHourOf(f.Now)
	hasPayload, hasLabels := "0", "0"
	if f.Payload != nil {
		hasPayload = "1"
	}
	if f.Labels != nil {
		hasLabels = "1"
	}
	started := "0"
	if !f.StartedAt.IsZero() {
		started = microsOf(f.StartedAt)
	}
	rec := encodeFailureRecord(f)
	expected := f.Phase // a job is almost always reported in its current phase
	now := store.NowMicros(f.Now)
	addPhase := !s.k.known.fresh(f.Phase, now)
	for range maxMovedAttempts {
		keys := []string{
			s.k.job(f.JobID), s.k.attempts(f.JobID), s.k.due(f.Phase), s.k.leases(),
			s.k.index(bucketProcessing, expected), s.k.index(after, f.Phase), s.k.phases(),
			s.k.statsHour(hour), s.k.hours(),
		}
		res, err := s.run(ctx, "record failure", recordFailureScript, keys,
			f.JobID, f.Phase, f.RetryCount, f.LeaseID, boolField(f.LeaseExpired),
			microsOf(f.Now), started, hasPayload, f.Payload, hasLabels, encodeLabels(f.Labels),
			int(f.Verdict.Decision), f.Verdict.NextRetryCount, dueOf(f.Verdict.DueAt),
			rec, f.ErrorType, f.ErrorMessage,
			statsField(outcome, f.RetryCount, f.Phase, f.ErrorType), hour,
			s.k.events(), expected, boolField(addPhase))
		if err != nil {
			return store.FailureResult{}, err
		}
		code, err := replyCode(res)
		if err != nil {
			return store.FailureResult{}, s.wrap("record failure", err)
		}
		switch code {
		case codeOK:
			if addPhase {
				s.k.known.added(f.Phase, now)
			}
			if err := s.durable(ctx, "record failure"); err != nil {
				return store.FailureResult{}, err
			}
			return store.FailureResult{Verdict: f.Verdict}, nil
		case codeDuplicate:
			r, err := decodeRecord(attemptField(0, f.RetryCount, f.Phase), replyString(res, 1))
			if err != nil {
				return store.FailureResult{}, s.wrap("record failure", err)
			}
			if err := s.durable(ctx, "record failure"); err != nil {
				return store.FailureResult{}, err
			}
			return store.FailureResult{Verdict: r.attempt.Verdict, Duplicate: true}, nil
		case codeMoved:
			expected = replyString(res, 1)
			continue
		}
		return store.FailureResult{}, reportError(code, res, f.JobID, f.Phase, f.RetryCount, f.LeaseID, "failed")
	}
	return store.FailureResult{}, fmt.Errorf("redisstore: record failure of job %q: its phase kept changing", f.JobID)
}

// recordSuccessScript applies a successful attempt, after the checks of
// the store package doc, in their order.
//
// KEYS[1] job hash         {P}:j:<job>
// KEYS[2] attempts hash    {P}:a:<job>
// KEYS[3] lease set        {P}:leases
// KEYS[4] index before     {P}:idx:p:<ARGV[18]>
// KEYS[5] index after      {P}:idx:p:<ARGV[11]> (next phase) or {P}:idx:c:<ARGV[2]> (completed)
// KEYS[6] phase set        {P}:phases
// KEYS[7] stats hash of the hour of ARGV[5]
// KEYS[8] stats hour set   {P}:hours
// ARGV[1]  job id
// ARGV[2]  phase
// ARGV[3]  retry_count
// ARGV[4]  lease id, "" when unleased
// ARGV[5]  now, µs
// ARGV[6]  started at, µs, "0" when unset
// ARGV[7]  "1" when a payload is given, ARGV[8] the payload
// ARGV[9]  "1" when labels are given, ARGV[10] the encoded labels
// ARGV[11] next phase, "" to complete the job
// ARGV[12] "1" when a next payload is given, ARGV[13] the next payload
// ARGV[14] the attempt record's first fields (codec.go)
// ARGV[15] stats field, ARGV[16] stats hour
// ARGV[17] events channel
// ARGV[18] the phase the caller expects the job to be in (for KEYS[4])
// ARGV[19] the job state afterwards: "1" processing, "3" completed
// ARGV[20] "1" to add the job's phase afterwards to KEYS[6] (phaseCache, keys.go)
// Returns {OK}; {DUPLICATE, record}; {CONFLICT}; {TERMINAL, state};
// {LEASE_NOT_HELD}; {PENDING, phase, retry_count}; {MOVED, phase}.
var recordSuccessScript = newScript(reportLua + `
local job, att = KEYS[1], KEYS[2]
local id, phase, rc, lease, now, nextp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[11]
local j = redis.call('HMGET', job, 'st', 'ph', 'cy', 'pd', 'n', 'nb', 'p:' .. phase, 'p:' .. nextp, 'r:' .. phase)
local st, ph, cy, pd, n, nb, blob, nblob = j[1], j[2], j[3], j[4], j[5], j[6], j[7], j[8]
if pd == '' then pd = false end
local p = pd and fields(pd) or {}
local cur, ncur = false, false
if not st then
  if lease ~= '' then return {LEASE_NOT_HELD} end
  cy = '1'
end
local afield = cy .. ':' .. rc .. ':' .. phase
if st and not (ARGV[7] ~= '1' and ARGV[12] ~= '1' and unrecorded(p, lease, phase, rc, cy, j[9])) then
  local a = redis.call('HMGET', att, afield, '#' .. (blob or ''), '#' .. (nblob or ''))
  if a[1] then
    if first(a[1]) == '2' then return {DUPLICATE, a[1]} end
    return {CONFLICT}
  end
  cur, ncur = a[2], a[3]
end
if st then
  if st ~= '1' then return {TERMINAL, st} end
  if lease ~= '' then
    if p[4] ~= lease or p[1] ~= phase or p[2] ~= rc then return {LEASE_NOT_HELD} end
  elseif pd then
    return {PENDING, p[1], p[2]}
  end
  if ph ~= ARGV[18] then return {MOVED, ph} end
end

local hset = {'ua', now}
highest(hset, lease, phase, rc, cy, j[9])
local hdel = {}
local aset = {}
local newblob = function(bytes)
  nb = tostring((tonumber(nb) or 0) + 1)
  table.insert(aset, '#' .. nb); table.insert(aset, bytes)
  return nb
end
if ARGV[7] == '1' and ARGV[8] ~= cur then
  blob = newblob(ARGV[8])
  table.insert(hset, 'p:' .. phase); table.insert(hset, blob)
  if nextp == phase then nblob, ncur = blob, ARGV[8] end
end
if nextp ~= '' and ARGV[12] == '1' and ARGV[13] ~= ncur then
  nblob = newblob(ARGV[13])
  table.insert(hset, 'p:' .. nextp); table.insert(hset, nblob)
end
if #aset > 0 then table.insert(hset, 'nb'); table.insert(hset, nb) end
local seq = tostring((tonumber(n) or 0) + 1)
local started, worker = ARGV[6], ''
if lease ~= '' then
  worker = p[6]
  if started == '0' then started = p[7] end
elseif started == '0' then
  started = now
end
table.insert(aset, afield)
table.insert(aset, ARGV[14] .. ns(seq) .. ns(started) .. ns(worker) .. ns(blob or ''))
redis.call('HSET', att, unpack(aset))

local newph = phase
if nextp ~= '' then newph = nextp end
for _, v in ipairs({'n', seq, 'st', ARGV[19], 'ph', newph}) do table.insert(hset, v) end
if not st then
  for _, v in ipairs({'cy', '1', 'ca', now}) do table.insert(hset, v) end
end
if ARGV[9] == '1' then
  if ARGV[10] == '' then table.insert(hdel, 'lb')
  else table.insert(hset, 'lb'); table.insert(hset, ARGV[10]) end
end
if pd then table.insert(hset, 'pd'); table.insert(hset, '') end
redis.call('HSET', job, unpack(hset))
if #hdel > 0 then redis.call('HDEL', job, unpack(hdel)) end
if lease ~= '' then redis.call('ZREM', KEYS[3], id) end
if st and KEYS[4] ~= KEYS[5] then redis.call('ZREM', KEYS[4], id) end
redis.call('ZADD', KEYS[5], now, id)
if ARGV[20] == '1' then redis.call('SADD', KEYS[6], newph) end
if redis.call('HINCRBY', KEYS[7], ARGV[15], 1) == 1 then
  redis.call('ZADD', KEYS[8], ARGV[16], ARGV[16])
end
if lease ~= '' then redis.call('PUBLISH', ARGV[17], 'r' .. ns(lease)) end
return {OK}
`)

// RecordSuccess applies a successful attempt in one script.
func (s *Store) RecordSuccess(ctx context.Context, sc store.Success) (store.SuccessResult, error) {
	after, afterBucket, afterPhase := store.StateCompleted, bucketCompleted, sc.Phase
	if sc.NextPhase != "" {
		after, afterBucket, afterPhase = store.StateProcessing, bucketProcessing, sc.NextPhase
	}
	hour := statsHourOf(sc.Now)
	hasPayload, hasLabels, hasNext := "0", "0", "0"
	if sc.Payload != nil {
		hasPayload = "1"
	}
	if sc.Labels != nil {
		hasLabels = "1"
	}
	if sc.NextPayload != nil {
		hasNext = "1"
	}
	started := "0"
	if !sc.StartedAt.IsZero() {
		started = microsOf(sc.StartedAt)
	}
	rec := encodeSuccessRecord(sc, after)
	expected := sc.Phase
	now := store.NowMicros(sc.Now)
	addPhase := !s.k.known.fresh(afterPhase, now)
	for range maxMovedAttempts {
		keys := []string{
			s.k.job(sc.JobID), s.k.attempts(sc.JobID), s.k.leases(),
			s.k.index(bucketProcessing, expected), s.k.index(afterBucket, afterPhase), s.k.phases(),
			s.k.statsHour(hour), s.k.hours(),
		}
		res, err := s.run(ctx, "record success", recordSuccessScript, keys,
			sc.JobID, sc.Phase, sc.RetryCount, sc.LeaseID, microsOf(sc.Now), started,
			hasPayload, sc.Payload, hasLabels, encodeLabels(sc.Labels),
			sc.NextPhase, hasNext, sc.NextPayload, rec,
			statsField('s', sc.RetryCount, sc.Phase, ""), hour, s.k.events(), expected, int(after),
			boolField(addPhase))
		if err != nil {
			return store.SuccessResult{}, err
		}
		code, err := replyCode(res)
		if err != nil {
			return store.SuccessResult{}, s.wrap("record success", err)
		}
		switch code {
		case codeOK:
			if addPhase {
				s.k.known.added(afterPhase, now)
			}
			if err := s.durable(ctx, "record success"); err != nil {
				return store.SuccessResult{}, err
			}
			return store.SuccessResult{State: after}, nil
		case codeDuplicate:
			r, err := decodeRecord(attemptField(0, sc.RetryCount, sc.Phase), replyString(res, 1))
			if err != nil {
				return store.SuccessResult{}, s.wrap("record success", err)
			}
			if err := s.durable(ctx, "record success"); err != nil {
				return store.SuccessResult{}, err
			}
			return store.SuccessResult{State: r.state, Duplicate: true}, nil
		case codeMoved:
			expected = replyString(res, 1)
			continue
		}
		return store.SuccessResult{}, reportError(code, res, sc.JobID, sc.Phase, sc.RetryCount, sc.LeaseID, "succeeded")
	}
	return store.SuccessResult{}, fmt.Errorf("redisstore: record success of job %q: its phase kept changing", sc.JobID)
}

// reportError maps a refusal of a report to its sentinel, with a message
// naming the job, the attempt, the lease and the state involved.
func reportError(code int64, res []any, jobID, phase string, rc uint32, leaseID, outcome string) error {
	attempt := fmt.Sprintf("job %q %s #%d", jobID, phase, rc)
	switch code {
	case codeConflict:
		other := "succeeded"
		if outcome == "succeeded" {
			other = "failed"
		}
		return fmt.Errorf("%w: %s was already recorded as %s", store.ErrConflict, attempt, other)
	case codeTerminal:
		return fmt.Errorf("%w: job %q is %s", store.ErrJobTerminal, jobID, stateName(replyString(res, 1)))
	case codeLeaseNotHeld:
		return fmt.Errorf("%w: lease %q is not the current lease of %s", store.ErrLeaseNotHeld, leaseID, attempt)
	case codeLeaseActive:
		var p parser
		return fmt.Errorf("%w: lease %q of %s is held until %s", store.ErrLeaseActive, leaseID, attempt,
			p.micros(replyString(res, 1)).Format("2006-01-02T15:04:05.999999Z07:00"))
	case codePending:
		return fmt.Errorf("%w: job %q has %s #%s pending; report it with the lease of its task",
			store.ErrAttemptPending, jobID, replyString(res, 1), replyString(res, 2))
	case codeOutOfOrder:
		var p parser
		recorded := uint32(p.uint(replyString(res, 1)))
		if p.err != nil {
			return p.err
		}
		return store.OutOfOrder(jobID, phase, rc, recorded)
	}
	return fmt.Errorf("redisstore: report of %s: unexpected script result %d", attempt, code)
}
