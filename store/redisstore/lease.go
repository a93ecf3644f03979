package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// claimScript leases the candidates Claim read from the due sets, each only
// if it is still scheduled in that phase and due: a candidate another
// claimer took first is skipped, so two claims never lease one attempt. A
// due-set entry whose job is not scheduled in that phase (which the scripts
// never leave behind) is removed rather than retried forever.
//
// A claim changes neither the job's update time nor its ListJobs index
// entry (a processing job has one index whatever its pending attempt does).
//
// KEYS[1] lease set {P}:leases
// KEYS[2+3i] … KEYS[4+3i] for candidate i = 0, 1, …: due set {P}:due:<phase>,
// job hash {P}:j:<job>, attempts hash {P}:a:<job>
// ARGV[1] now, µs; ARGV[2] lease expiry, µs; ARGV[3] worker id
// ARGV[4+3i], ARGV[5+3i], ARGV[6+3i] for candidate i: job id, phase, new lease id
// Returns one {job id, phase, retry_count, cycle, due µs, payload, labels,
// lease id} per leased candidate, in candidate order.
var claimScript = newScript(`
local now, exp, worker = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 0, (#ARGV - 3) / 3 - 1 do
  local due, job, att = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  local id, phase, lease = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  local j = redis.call('HMGET', job, 'st', 'pd', 'cy', 'lb', 'p:' .. phase)
  local p = j[2] and fields(j[2])
  if j[1] ~= '1' or not p or #p ~= 3 or p[1] ~= phase then
    redis.call('ZREM', due, id)
  elseif tonumber(p[3]) <= tonumber(now) and redis.call('ZREM', due, id) == 1 then
    redis.call('HSET', job, 'pd', j[2] .. ns(lease) .. ns(exp) .. ns(worker) .. ns(now))
    redis.call('ZADD', KEYS[1], exp, id)
    local payload = ''
    if j[5] then payload = redis.call('HGET', att, '#' .. j[5]) or '' end
    table.insert(out, {id, phase, p[2], j[3], p[3], payload, j[4] or '', lease})
  end
end
return out
`)

// candidate is an entry of a due set.
type candidate struct {
	id    string
	phase string
	due   int64
}

// Claim reads the earliest due entries of the phases, then leases them in
// one script that re-checks each. Entries lost to a concurrent claimer are
// replaced by reading again, a bounded number of times.
func (s *Store) Claim(ctx context.Context, c store.ClaimRequest) ([]store.Task, error) {
	phases := uniq(c.Phases)
	if c.Limit <= 0 || len(phases) == 0 {
		return nil, nil
	}
	now := store.NowMicros(c.Now)
	nowArg, expArg := strconv.FormatInt(now, 10), dueOf(c.Now.Add(c.LeaseFor))
	var tasks []store.Task
	for range claimRounds {
		want := c.Limit - len(tasks)
		cands, err := s.dueCandidates(ctx, phases, now, want)
		if err != nil {
			return claimed(tasks, err)
		}
		if len(cands) == 0 {
			break
		}
		keys := make([]string, 0, 1+3*len(cands))
		args := make([]any, 0, 3+3*len(cands))
		keys = append(keys, s.k.leases())
		args = append(args, nowArg, expArg, c.WorkerID)
		for _, cd := range cands {
			keys = append(keys, s.k.due(cd.phase), s.k.job(cd.id), s.k.attempts(cd.id))
			args = append(args, cd.id, cd.phase, newLeaseID())
		}
		res, err := s.run(ctx, "claim", claimScript, keys, args...)
		if err != nil {
			return claimed(tasks, err)
		}
		for _, r := range res {
			t, err := decodeTask(r, c.Now.Add(c.LeaseFor))
			if err != nil {
				return claimed(tasks, s.wrap("claim", err))
			}
			tasks = append(tasks, t)
		}
		// Everything read was leased and nothing more was due: done.
		if len(res) == len(cands) && len(cands) < want || len(tasks) >= c.Limit {
			break
		}
	}
	return tasks, nil
}

// claimed ends a Claim that failed in a later round: the tasks already
// leased are returned without the error, because a caller that dropped them
// would leave their leases to expire and be reaped as failed attempts. The
// error shows again on the next call.
func claimed(tasks []store.Task, err error) ([]store.Task, error) {
	if len(tasks) > 0 {
		return tasks, nil
	}
	return nil, err
}

// dueCandidates reads up to limit entries due at or before now from the due
// sets of the phases, earliest first across them.
func (s *Store) dueCandidates(ctx context.Context, phases []string, now int64, limit int) ([]candidate, error) {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(phases))
	for i, ph := range phases {
		cmds[i] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: s.k.due(ph), Start: "-inf", Stop: strconv.FormatInt(now, 10), ByScore: true, Count: int64(limit),
		})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, s.wrap("claim", err)
	}
	var out []candidate
	for i, cmd := range cmds {
		for _, z := range cmd.Val() {
			out = append(out, candidate{id: z.Member.(string), phase: phases[i], due: int64(z.Score)})
		}
	}
	slices.SortFunc(out, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.due, b.due), cmp.Compare(a.phase, b.phase), cmp.Compare(a.id, b.id))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func decodeTask(r any, expires time.Time) (store.Task, error) {
	f, ok := r.([]any)
	if !ok || len(f) != 8 {
		return store.Task{}, fmt.Errorf("%w: bad claim reply %v", errCorrupt, r)
	}
	str := func(i int) string { s, _ := f[i].(string); return s }
	labels, err := decodeLabels(str(6))
	if err != nil {
		return store.Task{}, err
	}
	var p parser
	t := store.Task{
		JobID:          str(0),
		Phase:          str(1),
		RetryCount:     uint32(p.uint(str(2))),
		Cycle:          uint32(p.uint(str(3))),
		DueAt:          p.micros(str(4)),
		Payload:        bytesOrNil(str(5)),
		Labels:         labels,
		LeaseID:        str(7),
		LeaseExpiresAt: store.FromMicros(store.DueMicros(expires)),
	}
	return t, p.err
}

// extendLeaseScript moves a held, unexpired lease's expiry later.
//
// KEYS[1] job hash  {P}:j:<job>
// KEYS[2] lease set {P}:leases
// ARGV[1] job id; ARGV[2] lease id; ARGV[3] until, µs; ARGV[4] now, µs
// Returns {OK, expiry µs}; {LEASE_NOT_HELD}; {LEASE_ACTIVE, expiry} is never
// returned: an expired lease is {LEASE_NOT_HELD, expiry}.
var extendLeaseScript = newScript(`
local pd = redis.call('HGET', KEYS[1], 'pd')
local p = pd and fields(pd) or {}
if p[4] ~= ARGV[2] then return {LEASE_NOT_HELD} end
if tonumber(p[5]) <= tonumber(ARGV[4]) then return {LEASE_NOT_HELD, p[5]} end
if tonumber(ARGV[3]) <= tonumber(p[5]) then return {OK, p[5]} end
redis.call('HSET', KEYS[1], 'pd', ns(p[1]) .. ns(p[2]) .. ns(p[3]) .. ns(p[4]) .. ns(ARGV[3]) .. ns(p[6]) .. ns(p[7]))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {OK, ARGV[3]}
`)

// ExtendLease moves a held, unexpired lease's expiry to until (never earlier).
func (s *Store) ExtendLease(ctx context.Context, jobID, leaseID string, until, now time.Time) (time.Time, error) {
	res, err := s.run(ctx, "extend lease", extendLeaseScript, []string{s.k.job(jobID), s.k.leases()},
		jobID, leaseID, dueOf(until), microsOf(now))
	if err != nil {
		return time.Time{}, err
	}
	code, err := replyCode(res)
	if err != nil {
		return time.Time{}, s.wrap("extend lease", err)
	}
	var p parser
	switch code {
	case codeOK:
		exp := p.micros(replyString(res, 1))
		if p.err != nil {
			return time.Time{}, p.err
		}
		if err := s.durable(ctx, "extend lease"); err != nil {
			return time.Time{}, err
		}
		return exp, nil
	case codeLeaseNotHeld:
		if e := replyString(res, 1); e != "" {
			return time.Time{}, fmt.Errorf("%w: lease %q of job %q expired at %s", store.ErrLeaseNotHeld, leaseID, jobID,
				p.micros(e).Format(time.RFC3339Nano))
		}
		return time.Time{}, fmt.Errorf("%w: lease %q is not the current lease of job %q", store.ErrLeaseNotHeld, leaseID, jobID)
	}
	return time.Time{}, fmt.Errorf("redisstore: extend lease of job %q: unexpected script result %d", jobID, code)
}

// returnLeaseScript schedules a leased attempt again at its original due
// time, recording nothing.
//
// KEYS[1] job hash   {P}:j:<job>
// KEYS[2] lease set  {P}:leases
// KEYS[3] due set    {P}:due:<ARGV[3]>
// ARGV[1] job id; ARGV[2] lease id; ARGV[3] the phase the caller read;
// ARGV[4] events channel
// Returns {OK}; {LEASE_NOT_HELD}; {MOVED, phase}.
var returnLeaseScript = newScript(`
local j = redis.call('HMGET', KEYS[1], 'pd', 'ph')
local p = j[1] and fields(j[1]) or {}
if p[4] ~= ARGV[2] then return {LEASE_NOT_HELD} end
if p[1] ~= ARGV[3] or j[2] ~= ARGV[3] then return {MOVED, p[1]} end
local scheduled = ns(p[1]) .. ns(p[2]) .. ns(p[3])
redis.call('HSET', KEYS[1], 'pd', scheduled)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], p[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], 'r' .. ns(ARGV[2]) .. 's' .. ns(p[1]) .. ns(p[3]))
return {OK}
`)

// ReturnLease gives a leased attempt back unrun.
func (s *Store) ReturnLease(ctx context.Context, jobID, leaseID string) error {
	notHeld := fmt.Errorf("%w: lease %q is not the current lease of job %q", store.ErrLeaseNotHeld, leaseID, jobID)
	// The keys depend on the phase, which only the job knows: read it, and
	// let the script check that it is still so.
	pd, err := s.client.HGet(ctx, s.k.job(jobID), "pd").Result()
	if errors.Is(err, redis.Nil) || (err == nil && pd == "") {
		return notHeld
	}
	if err != nil {
		return s.wrap("return lease", err)
	}
	p, err := decodePending(pd)
	if err != nil {
		return s.wrap("return lease", err)
	}
	if p.leaseID != leaseID {
		return notHeld
	}
	res, err := s.run(ctx, "return lease", returnLeaseScript,
		[]string{s.k.job(jobID), s.k.leases(), s.k.due(p.phase)},
		jobID, leaseID, p.phase, s.k.events())
	if err != nil {
		return err
	}
	code, err := replyCode(res)
	if err != nil {
		return s.wrap("return lease", err)
	}
	switch code {
	case codeOK:
		return nil
	case codeLeaseNotHeld:
		return notHeld
	}
	// A lease's phase never changes while it is held, so MOVED means the
	// job's record is inconsistent.
	return fmt.Errorf("redisstore: return lease %q of job %q: unexpected script result %d %v", leaseID, jobID, code, res[1:])
}

// ExpiredLeases lists up to limit leases whose expiry is at or before now,
// earliest first.
func (s *Store) ExpiredLeases(ctx context.Context, now time.Time, limit int) ([]store.Lease, error) {
	if limit <= 0 {
		return nil, nil
	}
	zs, err := s.client.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: s.k.leases(), Start: "-inf", Stop: strconv.FormatInt(store.NowMicros(now), 10), ByScore: true, Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, s.wrap("expired leases", err)
	}
	if len(zs) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(zs))
	for i, z := range zs {
		cmds[i] = pipe.HMGet(ctx, s.k.job(z.Member.(string)), "pd", "cy")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, s.wrap("expired leases", err)
	}
	out := make([]store.Lease, 0, len(zs))
	for i, z := range zs {
		v := cmds[i].Val()
		pdRaw, _ := v[0].(string)
		if pdRaw == "" {
			continue // reported between the two reads
		}
		p, err := decodePending(pdRaw)
		if err != nil {
			return nil, s.wrap("expired leases", err)
		}
		if p.leaseID == "" || store.DueMicros(p.expires) > store.NowMicros(now) {
			continue // reported and rescheduled, or extended, in between
		}
		var pr parser
		cy, _ := v[1].(string)
		out = append(out, store.Lease{
			JobID: z.Member.(string), LeaseID: p.leaseID, Phase: p.phase, RetryCount: p.retryCount,
			Cycle: uint32(pr.uint(cy)), WorkerID: p.workerID, LeasedAt: p.leasedAt, ExpiresAt: p.expires,
		})
	}
	return out, nil
}

// NextDue returns the earliest due time among the phases' scheduled attempts.
func (s *Store) NextDue(ctx context.Context, phases []string) (time.Time, bool, error) {
	phases = uniq(phases)
	if len(phases) == 0 {
		return time.Time{}, false, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(phases))
	for i, ph := range phases {
		cmds[i] = pipe.ZRangeWithScores(ctx, s.k.due(ph), 0, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return time.Time{}, false, s.wrap("next due", err)
	}
	var best int64
	found := false
	for _, cmd := range cmds {
		for _, z := range cmd.Val() {
			if !found || int64(z.Score) < best {
				best, found = int64(z.Score), true
			}
		}
	}
	if !found {
		return time.Time{}, false, nil
	}
	return store.FromMicros(best), true, nil
}

// NextLeaseExpiry returns the earliest lease expiry.
func (s *Store) NextLeaseExpiry(ctx context.Context) (time.Time, bool, error) {
	zs, err := s.client.ZRangeWithScores(ctx, s.k.leases(), 0, 0).Result()
	if err != nil {
		return time.Time{}, false, s.wrap("next lease expiry", err)
	}
	if len(zs) == 0 {
		return time.Time{}, false, nil
	}
	return store.FromMicros(int64(zs[0].Score)), true, nil
}

// Backlog returns the scheduled, unleased attempts per phase and the
// earliest due time of each: one pipeline of ZCARD and ZRANGE 0 0 per phase.
func (s *Store) Backlog(ctx context.Context) (map[string]store.PhaseBacklog, error) {
	phases, err := s.client.SMembers(ctx, s.k.phases()).Result()
	if err != nil {
		return nil, s.wrap("backlog", err)
	}
	pipe := s.client.Pipeline()
	counts := make([]*redis.IntCmd, len(phases))
	firsts := make([]*redis.ZSliceCmd, len(phases))
	for i, ph := range phases {
		counts[i] = pipe.ZCard(ctx, s.k.due(ph))
		firsts[i] = pipe.ZRangeWithScores(ctx, s.k.due(ph), 0, 0)
	}
	if len(phases) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, s.wrap("backlog", err)
		}
	}
	out := make(map[string]store.PhaseBacklog, len(phases))
	for i, ph := range phases {
		b := store.PhaseBacklog{Scheduled: counts[i].Val()}
		if z := firsts[i].Val(); len(z) > 0 {
			b.OldestDue = store.FromMicros(int64(z[0].Score))
		}
		out[ph] = b
	}
	return out, nil
}

// uniq returns the distinct values in first-seen order.
func uniq(in []string) []string {
	out := make([]string, 0, len(in))
	for _, v := range in {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}
