package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// decodeJob builds a Job (without attempts) from its hash and the record of
// its most recent failed attempt (h["lf"] names it).
func decodeJob(id string, h map[string]string, lastFailure string) (store.Job, error) {
	var p parser
	labels, err := decodeLabels(h["lb"])
	if err != nil {
		return store.Job{}, fmt.Errorf("job %q: %w", id, err)
	}
	j := store.Job{
		ID:             id,
		State:          store.JobState(p.uint(h["st"])),
		Phase:          h["ph"],
		Cycle:          uint32(p.uint(h["cy"])),
		Labels:         labels,
		FinalError:     h["fe"],
		FinalErrorType: h["ft"],
		TotalRetries:   uint32(p.uint(h["tr"])),
		CreatedAt:      p.micros(h["ca"]),
		UpdatedAt:      p.micros(h["ua"]),
	}
	if pd := h["pd"]; pd != "" {
		pe, err := decodePending(pd)
		if err != nil {
			return store.Job{}, fmt.Errorf("job %q: %w", id, err)
		}
		j.PendingPhase, j.PendingRetryCount, j.DueAt = pe.phase, pe.retryCount, pe.due
		j.LeaseID, j.LeaseExpiresAt, j.WorkerID = pe.leaseID, pe.expires, pe.workerID
	}
	if lf := h["lf"]; lf != "" && lastFailure != "" {
		r, err := decodeRecord(lf, lastFailure)
		if err != nil {
			return store.Job{}, fmt.Errorf("job %q: %w", id, err)
		}
		j.LastFailedPhase, j.LastFailedRetryCount, j.LastFailedAt = r.attempt.Phase, r.attempt.RetryCount, r.attempt.FinishedAt
		j.LastErrorType, j.LastError = r.attempt.ErrorType, r.attempt.ErrorMessage
	}
	if p.err != nil {
		return store.Job{}, fmt.Errorf("job %q: %w", id, p.err)
	}
	return j, nil
}

// readJobs reads jobs (without attempts) by id in two pipelined round
// trips: the hashes, then the last-failure records they name. Missing jobs
// are left out.
func (s *Store) readJobs(ctx context.Context, ids []string) ([]store.Job, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	hs := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		hs[i] = pipe.HGetAll(ctx, s.k.job(id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	pipe = s.client.Pipeline()
	lfs := make([]*redis.StringCmd, len(ids))
	n := 0
	for i, id := range ids {
		if lf := hs[i].Val()["lf"]; lf != "" {
			lfs[i] = pipe.HGet(ctx, s.k.attempts(id), lf)
			n++
		}
	}
	if n > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	out := make([]store.Job, 0, len(ids))
	for i, id := range ids {
		h := hs[i].Val()
		if len(h) == 0 {
			continue
		}
		var lf string
		if lfs[i] != nil {
			lf = lfs[i].Val()
		}
		j, err := decodeJob(id, h, lf)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// GetJob returns the job with every attempt, oldest first.
func (s *Store) GetJob(ctx context.Context, jobID string) (store.Job, error) {
	pipe := s.client.Pipeline()
	jh := pipe.HGetAll(ctx, s.k.job(jobID))
	ah := pipe.HGetAll(ctx, s.k.attempts(jobID))
	if _, err := pipe.Exec(ctx); err != nil {
		return store.Job{}, s.wrap("get job", err)
	}
	h, a := jh.Val(), ah.Val()
	if len(h) == 0 {
		return store.Job{}, fmt.Errorf("%w: %q", store.ErrNotFound, jobID)
	}
	j, err := decodeJob(jobID, h, a[h["lf"]])
	if err != nil {
		return store.Job{}, s.wrap("get job", err)
	}
	var recs []record
	for field, value := range a {
		if strings.HasPrefix(field, "#") {
			continue // a payload blob
		}
		r, err := decodeRecord(field, value)
		if err != nil {
			return store.Job{}, s.wrap("get job", fmt.Errorf("job %q: %w", jobID, err))
		}
		if r.blob != "" {
			blob, ok := a["#"+r.blob]
			if !ok {
				return store.Job{}, s.wrap("get job", fmt.Errorf("%w: job %q: attempt %q names missing payload %s", errCorrupt, jobID, field, r.blob))
			}
			r.attempt.Payload = bytesOrNil(blob)
		}
		recs = append(recs, r)
	}
	sortRecords(recs)
	j.Attempts = make([]store.Attempt, len(recs))
	for i, r := range recs {
		j.Attempts[i] = r.attempt
	}
	return j, nil
}

// sortRecords orders attempts as they were recorded.
func sortRecords(recs []record) {
	slices.SortFunc(recs, func(a, b record) int { return cmp.Compare(a.seq, b.seq) })
}

// indexEntry is a job in a ListJobs index: its id and last update (µs).
type indexEntry struct {
	score int64
	id    string
}

// before orders entries as ListJobs lists them: most recently updated
// first, then by id descending (Redis's reverse order for equal scores).
func (e indexEntry) before(o indexEntry) bool {
	if e.score != o.score {
		return e.score > o.score
	}
	return e.id > o.id
}

// ListJobs returns a page of jobs, most recently updated first. Each
// (bucket, phase) index is read from the cursor on, the reads are merged,
// and the jobs are read and checked against the filter (a job may have
// moved between the two reads; "in backoff" has no index of its own and is
// only checked here, on the processing jobs). At most 1000 index entries
// are looked at per call (a filter few jobs pass must not make one call
// read a whole index); a page may then be short, with a cursor to go on. A
// zero Limit means 50.
func (s *Store) ListJobs(ctx context.Context, q store.ListQuery) (store.JobPage, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	var pos *indexEntry
	if q.Cursor != "" {
		score, id, err := decodeCursor(q.Cursor)
		if err != nil {
			return store.JobPage{}, err
		}
		pos = &indexEntry{score: score, id: id}
	}
	buckets := bucketsFor(q)
	if len(buckets) == 0 {
		return store.JobPage{}, nil
	}
	phases := []string{q.Phase}
	if q.Phase == "" {
		var err error
		if phases, err = s.client.SMembers(ctx, s.k.phases()).Result(); err != nil {
			return store.JobPage{}, s.wrap("list jobs", err)
		}
	}
	var idx []string
	for _, b := range buckets {
		for _, ph := range phases {
			idx = append(idx, s.k.index(b, ph))
		}
	}
	if len(idx) == 0 {
		return store.JobPage{}, nil
	}

	var page store.JobPage
	for budget := listScanPerCall; budget > 0; {
		need := limit - len(page.Jobs)
		entries, err := s.indexPage(ctx, idx, pos, need+1)
		if err != nil {
			return store.JobPage{}, s.wrap("list jobs", err)
		}
		more := len(entries) > need
		if more {
			entries = entries[:need]
		}
		if len(entries) == 0 {
			return page, nil
		}
		ids := make([]string, len(entries))
		for i, e := range entries {
			ids[i] = e.id
		}
		jobs, err := s.readJobs(ctx, ids)
		if err != nil {
			return store.JobPage{}, s.wrap("list jobs", err)
		}
		for _, j := range jobs {
			if matches(j, q) {
				page.Jobs = append(page.Jobs, j)
			}
		}
		last := entries[len(entries)-1]
		pos = &last
		budget -= len(entries)
		if !more {
			return page, nil
		}
		if len(page.Jobs) == limit {
			break
		}
	}
	page.NextCursor = encodeCursor(pos.score, pos.id)
	return page, nil
}

// bucketsFor lists the buckets a query's state and backoff filter cover.
func bucketsFor(q store.ListQuery) []bucket {
	if q.InBackoff {
		if q.State == 0 || q.State == store.StateProcessing {
			return []bucket{bucketProcessing}
		}
		return nil
	}
	switch q.State {
	case 0:
		return []bucket{bucketProcessing, bucketFailed, bucketCompleted, bucketCanceled}
	case store.StateProcessing:
		return []bucket{bucketProcessing}
	case store.StateFailed:
		return []bucket{bucketFailed}
	case store.StateCompleted:
		return []bucket{bucketCompleted}
	case store.StateCanceled:
		return []bucket{bucketCanceled}
	}
	return nil
}

// matches checks a job read after its index entry against the query.
func matches(j store.Job, q store.ListQuery) bool {
	return (q.State == 0 || j.State == q.State) && (q.Phase == "" || j.Phase == q.Phase) &&
		(!q.InBackoff || j.InBackoff())
}

// indexPage returns the first n entries after pos (all when pos is nil)
// across the index sorted sets, in listing order.
func (s *Store) indexPage(ctx context.Context, idx []string, pos *indexEntry, n int) ([]indexEntry, error) {
	max := "+inf"
	if pos != nil {
		max = strconv.FormatInt(pos.score, 10)
	}
	type scan struct {
		key    string
		offset int64
		kept   []indexEntry
		done   bool
	}
	scans := make([]*scan, len(idx))
	for i, k := range idx {
		scans[i] = &scan{key: k}
	}
	// Entries with pos's score and an id at or after pos's were on earlier
	// pages; skipping them may leave a batch empty, so read on (this only
	// loops when many jobs share one microsecond).
	for {
		pipe := s.client.Pipeline()
		cmds := map[*scan]*redis.ZSliceCmd{}
		for _, sc := range scans {
			if !sc.done {
				cmds[sc] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
					Key: sc.key, Start: max, Stop: "-inf", ByScore: true, Rev: true, Offset: sc.offset, Count: int64(n),
				})
			}
		}
		if len(cmds) == 0 {
			break
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		for sc, cmd := range cmds {
			zs := cmd.Val()
			for _, z := range zs {
				e := indexEntry{score: int64(z.Score), id: z.Member.(string)}
				if pos == nil || pos.before(e) {
					sc.kept = append(sc.kept, e)
				}
			}
			sc.offset += int64(len(zs))
			sc.done = len(sc.kept) >= n || len(zs) < n
		}
	}
	var all []indexEntry
	for _, sc := range scans {
		all = append(all, sc.kept...)
	}
	slices.SortFunc(all, func(a, b indexEntry) int {
		switch {
		case a.before(b):
			return -1
		case b.before(a):
			return 1
		}
		return 0
	})
	if len(all) > n {
		all = all[:n]
	}
	return all, nil
}

// Stats sums the hourly counters of the hours that start in
// [Since rounded down to the hour, Until). A zero Until is no upper bound.
func (s *Store) Stats(ctx context.Context, q store.StatsQuery) ([]store.PhaseStats, error) {
	min, max := "-inf", "+inf"
	if !q.Since.IsZero() {
		min = strconv.FormatInt(statsHourOf(q.Since), 10)
	}
	if !q.Until.IsZero() {
		// The last hour starting before Until.
		max = strconv.FormatInt(statsHourOf(q.Until.Add(-time.Microsecond)), 10)
	}
	hours, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.k.hours(), Start: min, Stop: max, ByScore: true}).Result()
	if err != nil {
		return nil, s.wrap("stats", err)
	}
	if len(hours) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(hours))
	for i, h := range hours {
		hour, err := strconv.ParseInt(h, 10, 64)
		if err != nil {
			return nil, s.wrap("stats", fmt.Errorf("%w: bad stats hour %q", errCorrupt, h))
		}
		cmds[i] = pipe.HGetAll(ctx, s.k.statsHour(hour))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, s.wrap("stats", err)
	}
	byPhase := map[string]*store.PhaseStats{}
	for _, cmd := range cmds {
		for field, v := range cmd.Val() {
			k, err := parseStatsField(field)
			if err != nil {
				return nil, s.wrap("stats", err)
			}
			// A phase's count of error types (capTypes), not a counter of attempts.
			if k.outcome == 't' || q.Phase != "" && k.phase != q.Phase {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, s.wrap("stats", fmt.Errorf("%w: bad counter %q of %q", errCorrupt, v, field))
			}
			ps := byPhase[k.phase]
			if ps == nil {
				ps = &store.PhaseStats{Phase: k.phase}
				byPhase[k.phase] = ps
			}
			ps.Attempts += n
			if k.retried {
				ps.Retries += n
				if k.outcome == 's' {
					ps.SuccessfulRetries += n
				}
			}
			if k.outcome == 'g' {
				ps.GivenUp += n
			}
			if k.outcome != 's' {
				if ps.FailuresByType == nil {
					ps.FailuresByType = map[string]uint64{}
				}
				ps.FailuresByType[k.errorType] += n
			}
		}
	}
	out := make([]store.PhaseStats, 0, len(byPhase))
	for _, ph := range slices.Sorted(maps.Keys(byPhase)) {
		out = append(out, *byPhase[ph])
	}
	return out, nil
}
