package redisstore

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// The states below are one job, "job-1", of the specification's pipeline.
const (
	payload0 = `{"document_id":"d1","source_location":"s3://docs/d1"}`
	leaseL1  = "L1"
)

var (
	labels1    = fld("document_id", "doc-1", "source_name", "d1.pdf")
	hour0      = hourOf(0)
	statsHour0 = "{t}:stats:" + strconv.FormatInt(hour0, 10)
	hoursSet   = zset{{strconv.FormatInt(hour0, 10), hour0}}
	// rec0 is extraction #0, failed unleased at t0, retried in a minute.
	rec0 = fld("1", us(0), "requests.exceptions.ConnectionError", "connection reset by peer", "503", "",
		"1", "1", "ConnectionError is retryable.", "1", "60000000000", ns(time.Minute), "",
		"1", us(0), "", "1")
)

// firstFailure is the report that creates the scheduled state.
func firstFailure() store.Failure {
	return store.Failure{
		JobID: "job-1", Phase: "extraction", RetryCount: 0,
		ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: "connection reset by peer", HTTPStatus: 503,
		Payload: []byte(payload0), Labels: map[string]string{"document_id": "doc-1", "source_name": "d1.pdf"},
		Now: t0,
		Verdict: store.Verdict{
			Decision: store.DecisionRetry, Retryable: true, Reason: "ConnectionError is retryable.",
			NextRetryCount: 1, Delay: time.Minute, DueAt: t0.Add(time.Minute),
		},
	}
}

// scheduledState: extraction #0 failed at t0; retry #1 is due at t0+1m.
func scheduledState() state {
	return state{
		"{t}:j:job-1": hash{
			"st": "1", "ph": "extraction", "cy": "1", "lb": labels1, "ca": us(0), "ua": us(0),
			"lf": "1:0:extraction", "n": "1", "nb": "1", "p:extraction": "1",
			"pd": fld("extraction", "1", us(time.Minute)),
		},
		"{t}:a:job-1":          hash{"#1": payload0, "1:0:extraction": rec0},
		"{t}:due:extraction":   zset{{"job-1", usn(time.Minute)}},
		"{t}:idx:p:extraction": zset{{"job-1", usn(0)}},
		"{t}:phases":           set{"extraction"},
		statsHour0:             hash{"r0" + fld("extraction") + "requests.exceptions.ConnectionError": "1", "t0" + fld("extraction"): "1"},
		"{t}:hours":            hoursSet,
	}
}

// leasedState: retry #1 was claimed at t0+2m by w1 under lease L1 for 30s.
// A claim changes neither the update time nor the ListJobs index entry.
func leasedState() state {
	st := scheduledState()
	st["{t}:j:job-1"].(hash)["pd"] = fld("extraction", "1", us(time.Minute), leaseL1, us(150*time.Second), "w1", us(2*time.Minute))
	delete(st, "{t}:due:extraction")
	st["{t}:leases"] = zset{{"job-1", usn(150 * time.Second)}}
	return st
}

// failedState: retry #1 failed at t0+3m under L1 and retryd gave up.
func failedState() state {
	st := leasedState()
	j := st["{t}:j:job-1"].(hash)
	j["pd"] = "" // nothing pending
	j["st"], j["ua"], j["lf"], j["n"] = "2", us(3*time.Minute), "1:1:extraction", "2"
	j["fe"], j["ft"], j["tr"] = "chunk 7 is empty", "ValidationError", "1"
	st["{t}:a:job-1"].(hash)["1:1:extraction"] = fld("1", us(3*time.Minute), "ValidationError", "chunk 7 is empty", "422", "",
		"2", "0", "ValidationError is not retryable.", "0", "0", "", "",
		"2", us(2*time.Minute), "w1", "1")
	delete(st, "{t}:leases")
	delete(st, "{t}:idx:p:extraction")
	st["{t}:idx:f:extraction"] = zset{{"job-1", usn(3 * time.Minute)}}
	st[statsHour0].(hash)["g1"+fld("extraction")+"ValidationError"] = "1"
	st[statsHour0].(hash)["t0"+fld("extraction")] = "2" // error types counted in the phase this hour
	return st
}

func giveUpReport() store.Failure {
	return store.Failure{
		JobID: "job-1", Phase: "extraction", RetryCount: 1, LeaseID: leaseL1,
		ErrorType: "ValidationError", ErrorMessage: "chunk 7 is empty", HTTPStatus: 422,
		Now:     t0.Add(3 * time.Minute),
		Verdict: store.Verdict{Decision: store.DecisionGiveUp, Reason: "ValidationError is not retryable."},
	}
}

func TestRecordFailureCreatesJob(t *testing.T) {
	h := setup(t)
	events := h.tap()
	res, err := h.s.RecordFailure(h.ctx, firstFailure())
	require.NoError(t, err)
	require.Equal(t, store.FailureResult{Verdict: firstFailure().Verdict}, res)
	h.requireState(scheduledState(), "the first failure")
	require.Equal(t, []string{"s" + fld("extraction", us(time.Minute))}, events())
}

func TestClaimLeases(t *testing.T) {
	h := setup(t)
	h.seed(scheduledState())
	tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
		Phases: []string{"extraction", "chunking"}, Limit: 10, Now: t0.Add(2 * time.Minute), LeaseFor: 30 * time.Second, WorkerID: "w1",
	})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	lease := tasks[0].LeaseID
	require.Len(t, lease, 22, "128 random bits, base64url")
	want := leasedState()
	want["{t}:j:job-1"].(hash)["pd"] = fld("extraction", "1", us(time.Minute), lease, us(150*time.Second), "w1", us(2*time.Minute))
	h.requireState(want, "Claim")
}

func TestRecordFailureGivesUp(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	res, err := h.s.RecordFailure(h.ctx, giveUpReport())
	require.NoError(t, err)
	require.Equal(t, store.FailureResult{Verdict: giveUpReport().Verdict}, res)
	h.requireState(failedState(), "the give-up report")
	require.Equal(t, []string{"r" + fld(leaseL1)}, events())
}

func TestRecordFailureRetriesLeased(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	f := giveUpReport()
	f.LeaseExpired = true // the reaper, at the expiry
	f.Now = t0.Add(150 * time.Second)
	f.ErrorType, f.ErrorMessage, f.HTTPStatus = "LeaseExpired", "lease of w1 expired", 0
	f.Verdict = store.Verdict{
		Decision: store.DecisionRetry, Retryable: true, Reason: "LeaseExpired is retryable.",
		NextRetryCount: 2, Delay: 5 * time.Minute, DueAt: t0.Add(450 * time.Second),
	}
	_, err := h.s.RecordFailure(h.ctx, f)
	require.NoError(t, err)

	want := leasedState()
	j := want["{t}:j:job-1"].(hash)
	j["pd"], j["ua"], j["lf"], j["n"] = fld("extraction", "2", us(450*time.Second)), us(150*time.Second), "1:1:extraction", "2"
	want["{t}:a:job-1"].(hash)["1:1:extraction"] = fld("1", us(150*time.Second), "LeaseExpired", "lease of w1 expired", "0", "",
		"1", "1", "LeaseExpired is retryable.", "2", "300000000000", ns(450*time.Second), "",
		"2", us(2*time.Minute), "w1", "1")
	delete(want, "{t}:leases")
	want["{t}:due:extraction"] = zset{{"job-1", usn(450 * time.Second)}}
	want["{t}:idx:p:extraction"] = zset{{"job-1", usn(150 * time.Second)}}
	want[statsHour0].(hash)["r1"+fld("extraction")+"LeaseExpired"] = "1"
	want[statsHour0].(hash)["t0"+fld("extraction")] = "2"
	h.requireState(want, "the reaper's report")
	require.Equal(t, []string{"r" + fld(leaseL1) + "s" + fld("extraction", us(450*time.Second))}, events())
}

func TestRecordSuccessHandsOff(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	res, err := h.s.RecordSuccess(h.ctx, store.Success{
		JobID: "job-1", Phase: "extraction", RetryCount: 1, LeaseID: leaseL1,
		NextPhase: "chunking", NextPayload: []byte(`{"text":"s3://t/d1"}`), Output: []byte(`{"pages":3}`),
		Now: t0.Add(3 * time.Minute),
	})
	require.NoError(t, err)
	require.Equal(t, store.SuccessResult{State: store.StateProcessing}, res)

	want := leasedState()
	j := want["{t}:j:job-1"].(hash)
	j["pd"] = ""
	j["ph"], j["ua"], j["n"], j["nb"], j["p:chunking"] = "chunking", us(3*time.Minute), "2", "2", "2"
	a := want["{t}:a:job-1"].(hash)
	a["#2"] = `{"text":"s3://t/d1"}`
	a["1:1:extraction"] = fld("2", us(3*time.Minute), "", "", "0", `{"pages":3}`, "", "", "", "", "", "", "1",
		"2", us(2*time.Minute), "w1", "1")
	delete(want, "{t}:leases")
	delete(want, "{t}:idx:p:extraction")
	want["{t}:idx:p:chunking"] = zset{{"job-1", usn(3 * time.Minute)}}
	want["{t}:phases"] = set{"chunking", "extraction"}
	want[statsHour0].(hash)["s1"+fld("extraction")] = "1"
	h.requireState(want, "the hand-off")
	require.Equal(t, []string{"r" + fld(leaseL1)}, events())
}

// TestReportInAnotherPhase covers the keys the Go side guesses: a report in
// a phase other than the job's current one is rerun with the right index.
func TestReportInAnotherPhase(t *testing.T) {
	h := setup(t)
	// The job is in chunking with nothing pending (a hand-off happened).
	handedOff := scheduledState()
	delete(handedOff, "{t}:due:extraction")
	delete(handedOff, "{t}:idx:p:extraction")
	j := handedOff["{t}:j:job-1"].(hash)
	delete(j, "pd")
	j["ph"] = "chunking"
	handedOff["{t}:idx:p:chunking"] = zset{{"job-1", usn(0)}}
	handedOff["{t}:phases"] = set{"chunking", "extraction"}
	h.seed(handedOff)

	f := firstFailure()
	f.Phase, f.RetryCount, f.Payload, f.Labels, f.Now = "kg_ingest", 0, nil, nil, t0.Add(time.Minute)
	f.Verdict = store.Verdict{Decision: store.DecisionGiveUp, Reason: "no"}
	_, err := h.s.RecordFailure(h.ctx, f)
	require.NoError(t, err)

	want := handedOff.clone()
	j = want["{t}:j:job-1"].(hash)
	j["ph"], j["st"], j["ua"], j["lf"], j["n"] = "kg_ingest", "2", us(time.Minute), "1:0:kg_ingest", "2"
	j["fe"], j["ft"], j["tr"] = f.ErrorMessage, f.ErrorType, "0"
	want["{t}:a:job-1"].(hash)["1:0:kg_ingest"] = fld("1", us(time.Minute), f.ErrorType, f.ErrorMessage, "503", "",
		"2", "0", "no", "0", "0", "", "", "2", us(time.Minute), "", "")
	delete(want, "{t}:idx:p:chunking")
	want["{t}:idx:f:kg_ingest"] = zset{{"job-1", usn(time.Minute)}}
	want["{t}:phases"] = set{"chunking", "extraction", "kg_ingest"}
	want[statsHour0].(hash)["g0"+fld("kg_ingest")+f.ErrorType] = "1"
	want[statsHour0].(hash)["t0"+fld("kg_ingest")] = "1"
	h.requireState(want, "a report in another phase")
}

func TestExtendLeaseScript(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	until, err := h.s.ExtendLease(h.ctx, "job-1", leaseL1, t0.Add(5*time.Minute), t0.Add(130*time.Second))
	require.NoError(t, err)
	require.True(t, until.Equal(t0.Add(5*time.Minute)))
	want := leasedState()
	want["{t}:j:job-1"].(hash)["pd"] = fld("extraction", "1", us(time.Minute), leaseL1, us(5*time.Minute), "w1", us(2*time.Minute))
	want["{t}:leases"] = zset{{"job-1", usn(5 * time.Minute)}}
	h.requireState(want, "ExtendLease")
}

func TestReturnLeaseScript(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	require.NoError(t, h.s.ReturnLease(h.ctx, "job-1", leaseL1))
	h.requireState(scheduledState(), "ReturnLease")
	require.Equal(t, []string{"r" + fld(leaseL1) + "s" + fld("extraction", us(time.Minute))}, events())
}

func TestCancelJobScript(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	job, err := h.s.CancelJob(h.ctx, "job-1", "operator: \"stop\"", t0.Add(140*time.Second))
	require.NoError(t, err)
	require.Equal(t, store.StateCanceled, job.State)
	want := leasedState()
	j := want["{t}:j:job-1"].(hash)
	delete(j, "pd")
	j["st"], j["fe"], j["ua"] = "4", "operator: \"stop\"", us(140*time.Second)
	delete(want, "{t}:leases")
	delete(want, "{t}:idx:p:extraction")
	want["{t}:idx:x:extraction"] = zset{{"job-1", usn(140 * time.Second)}}
	h.requireState(want, "CancelJob")
	require.Equal(t, []string{"r" + fld(leaseL1)}, events())
}

func TestRetryJobScript(t *testing.T) {
	h := setup(t)
	h.seed(failedState())
	events := h.tap()
	job, err := h.s.RetryJob(h.ctx, "job-1", "", t0.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, uint32(2), job.Cycle)
	want := failedState()
	j := want["{t}:j:job-1"].(hash)
	delete(j, "fe")
	delete(j, "ft")
	delete(j, "tr")
	j["st"], j["cy"], j["ua"], j["pd"] = "1", "2", us(time.Hour), fld("extraction", "0", us(time.Hour))
	delete(want, "{t}:idx:f:extraction")
	want["{t}:idx:p:extraction"] = zset{{"job-1", usn(time.Hour)}}
	want["{t}:due:extraction"] = zset{{"job-1", usn(time.Hour)}}
	h.requireState(want, "RetryJob")
	require.Equal(t, []string{"s" + fld("extraction", us(time.Hour))}, events())
}

func TestExpireScripts(t *testing.T) {
	h := setup(t)
	h.seed(failedState())
	// A second, processing job as old as the first: never expired.
	other := scheduledState()
	h.seed(state{
		"{t}:j:job-2":          other["{t}:j:job-1"],
		"{t}:a:job-2":          other["{t}:a:job-1"],
		"{t}:due:extraction":   zset{{"job-2", usn(time.Minute)}},
		"{t}:idx:p:extraction": zset{{"job-2", usn(0)}},
	})
	before := h.dump()

	res, err := h.s.Expire(h.ctx, t0.Add(store.DefaultJobRetention+3*time.Minute))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{}, res, "updated exactly one retention ago: kept")
	h.requireState(before, "Expire at the retention")

	res, err = h.s.Expire(h.ctx, t0.Add(store.DefaultJobRetention+3*time.Minute+time.Microsecond))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{ByAge: 1}, res)
	want := before.clone()
	delete(want, "{t}:j:job-1")
	delete(want, "{t}:a:job-1")
	delete(want, "{t}:idx:f:extraction")
	h.requireState(want, "Expire past the job retention")

	// Hour 09:00 ends at 10:00; it goes once 10:00 is a retention ago.
	_, err = h.s.Expire(h.ctx, t0.Add(store.DefaultStatsRetention+time.Hour-time.Microsecond))
	require.NoError(t, err)
	h.requireState(want, "Expire before the hour ended a retention ago")
	res, err = h.s.Expire(h.ctx, t0.Add(store.DefaultStatsRetention+time.Hour))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{StatsHours: 1}, res)
	delete(want, statsHour0)
	delete(want, "{t}:hours")
	h.requireState(want, "Expire past the stats retention")
}

// TestExpireByCountScripts: beyond MaxTerminalJobs the least recently
// updated terminal job goes, with its attempts and index entry, and nothing
// else changes; a processing job never counts.
func TestExpireByCountScripts(t *testing.T) {
	h := setup(t)
	h.seed(failedState()) // job-1, failed, updated at t0+3m
	newer := failedState()
	j2 := newer["{t}:j:job-1"].(hash)
	j2["ua"] = us(4 * time.Minute)
	other := scheduledState()
	h.seed(state{
		"{t}:j:job-2":          j2,
		"{t}:a:job-2":          newer["{t}:a:job-1"],
		"{t}:idx:f:extraction": zset{{"job-2", usn(4 * time.Minute)}},
		"{t}:j:job-3":          other["{t}:j:job-1"],
		"{t}:a:job-3":          other["{t}:a:job-1"],
		"{t}:due:extraction":   zset{{"job-3", usn(time.Minute)}},
		"{t}:idx:p:extraction": zset{{"job-3", usn(0)}},
	})
	before := h.dump()
	s := New(h.rdb, Options{Prefix: "t", MaxTerminalJobs: 1})

	res, err := s.Expire(h.ctx, t0.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{ByCount: 1}, res)
	want := before.clone()
	delete(want, "{t}:j:job-1")
	delete(want, "{t}:a:job-1")
	want["{t}:idx:f:extraction"] = zset{{"job-2", usn(4 * time.Minute)}}
	h.requireState(want, "Expire beyond the count bound")

	res, err = s.Expire(h.ctx, t0.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{}, res, "at the bound: nothing goes")
	h.requireState(want, "Expire at the count bound")
}

// TestExpireLimit: one Expire call removes at most ExpireLimit jobs and
// says so with More; calling again finishes the work.
func TestExpireLimit(t *testing.T) {
	h := setup(t)
	for i := range 5 {
		_, err := h.s.RecordSuccess(h.ctx, store.Success{JobID: fmt.Sprintf("job-%d", i), Phase: "extraction", Now: t0.Add(time.Duration(i) * time.Minute)})
		require.NoError(t, err)
	}
	byCount := New(h.rdb, Options{Prefix: "t", MaxTerminalJobs: 1, ExpireLimit: 2})
	var got []store.ExpireResult
	for range 3 {
		res, err := byCount.Expire(h.ctx, t0.Add(time.Hour))
		require.NoError(t, err)
		got = append(got, res)
	}
	require.Equal(t, []store.ExpireResult{{ByCount: 2, More: true}, {ByCount: 2}, {}}, got)
	ids, err := h.rdb.ZRange(h.ctx, "{t}:idx:c:extraction", 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"job-4"}, ids, "the most recently updated job is kept")

	byAge := New(h.rdb, Options{Prefix: "t", JobRetention: time.Minute, ExpireLimit: 1})
	for i := range 3 {
		_, err := h.s.RecordSuccess(h.ctx, store.Success{JobID: fmt.Sprintf("old-%d", i), Phase: "chunking", Now: t0})
		require.NoError(t, err)
	}
	res, err := byAge.Expire(h.ctx, t0.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, store.ExpireResult{ByAge: 1, More: true}, res, "the count bound waits while age is not done")
}

// TestRefusalsChangeNothing: every refused or duplicate report leaves every
// key as it was and publishes nothing.
func TestRefusalsChangeNothing(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	events := h.tap()
	dup := firstFailure()
	dup.Verdict.Reason = "another verdict"
	res, err := h.s.RecordFailure(h.ctx, dup)
	require.NoError(t, err)
	require.Equal(t, store.FailureResult{Verdict: firstFailure().Verdict, Duplicate: true}, res)

	_, err = h.s.RecordSuccess(h.ctx, store.Success{JobID: "job-1", Phase: "extraction", RetryCount: 0, Now: t0})
	require.ErrorIs(t, err, store.ErrConflict)
	require.ErrorContains(t, err, `job "job-1" extraction #0 was already recorded as failed`)

	bogus := giveUpReport()
	bogus.LeaseID = "L2"
	_, err = h.s.RecordFailure(h.ctx, bogus)
	require.ErrorIs(t, err, store.ErrLeaseNotHeld)
	require.ErrorContains(t, err, `lease "L2"`)

	unleased := giveUpReport()
	unleased.LeaseID = ""
	_, err = h.s.RecordFailure(h.ctx, unleased)
	require.ErrorIs(t, err, store.ErrAttemptPending)

	early := giveUpReport()
	early.LeaseExpired, early.Now = true, t0.Add(150*time.Second-time.Microsecond)
	_, err = h.s.RecordFailure(h.ctx, early)
	require.ErrorIs(t, err, store.ErrLeaseActive)

	_, err = h.s.ExtendLease(h.ctx, "job-1", leaseL1, t0.Add(time.Hour), t0.Add(150*time.Second))
	require.ErrorIs(t, err, store.ErrLeaseNotHeld, "an expired lease cannot be extended")
	_, err = h.s.RetryJob(h.ctx, "job-1", "", t0.Add(time.Hour))
	require.ErrorIs(t, err, store.ErrJobNotFailed)
	require.ErrorIs(t, h.s.ReturnLease(h.ctx, "job-1", "L2"), store.ErrLeaseNotHeld)

	h.requireState(leasedState(), "refused reports")
	require.Empty(t, events())
}

// hmgets returns how many HMGET commands Redis has run since the last
// count, to tell whether a report probed the attempts hash.
func (h *harness) hmgets() int64 { return h.calls("hmget") }

// counted gives f's stats counter a value before f is reported, so that the
// report increments it rather than creating it (which counts the phase's
// error types, with an HMGET of its own: capTypes).
func (h *harness) counted(f store.Failure, outcome byte) {
	h.t.Helper()
	key := "{t}:stats:" + strconv.FormatInt(statsHourOf(f.Now), 10)
	require.NoError(h.t, h.rdb.HSet(h.ctx, key, statsField(outcome, f.RetryCount, f.Phase, f.ErrorType), 5).Err())
}

// calls returns how many times Redis has run the command (lower case)
// since the last count; it resets every counter.
func (h *harness) calls(cmd string) int64 {
	h.t.Helper()
	n := commandCalls(h.t, h.rdb, cmd)
	require.NoError(h.t, h.rdb.ConfigResetStat(h.ctx).Err())
	return n
}

// TestLeasedReportSkipsProbe: the report of the pending attempt under its
// lease reads only the job hash (it cannot be a duplicate); repeating it
// afterwards (the lease is gone) probes, and answers DUPLICATE with the
// first verdict or CONFLICT, changing nothing.
func TestLeasedReportSkipsProbe(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	f := giveUpReport()
	f.Verdict = store.Verdict{
		Decision: store.DecisionRetry, Retryable: true, Reason: "retry 2 of 3 in 5m.",
		NextRetryCount: 2, Delay: 5 * time.Minute, DueAt: f.Now.Add(5 * time.Minute),
	}
	h.counted(f, 'r')
	h.hmgets()
	res, err := h.s.RecordFailure(h.ctx, f)
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Equal(t, int64(1), h.hmgets(), "the job hash only: no attempts-hash probe")
	after := h.dump()
	require.NotContains(t, after["{t}:j:job-1"], "r:extraction", "kept for unleased reports of retry_count 1 or more only")

	events := h.tap()
	again := f
	again.Verdict.Reason = "another verdict"
	res, err = h.s.RecordFailure(h.ctx, again)
	require.NoError(t, err)
	require.Equal(t, store.FailureResult{Verdict: f.Verdict, Duplicate: true}, res)
	require.Equal(t, int64(2), h.hmgets(), "a repeat probes the attempts hash")
	_, err = h.s.RecordSuccess(h.ctx, store.Success{JobID: "job-1", Phase: "extraction", RetryCount: 1, LeaseID: leaseL1, Now: f.Now})
	require.ErrorIs(t, err, store.ErrConflict)
	old := firstFailure()
	old.LeaseID = leaseL1
	res, err = h.s.RecordFailure(h.ctx, old)
	require.NoError(t, err)
	require.Equal(t, store.FailureResult{Verdict: firstFailure().Verdict, Duplicate: true}, res,
		"an older attempt, recorded: the duplicate check comes before the lease check")
	h.requireState(after, "repeated reports")
	require.Empty(t, events())
}

// TestOutOfOrderFailureRefused: an unleased failure of #0 after #2 of the
// phase was recorded (a worker running its own retries) would schedule #1,
// whose retry would come round to #2: "r:<phase>" tells the script, which
// refuses it (check 6 of the store package doc) and changes nothing. This
// is also what keeps a leased report of a pending attempt from ever
// finding it recorded (reportLua).
func TestOutOfOrderFailureRefused(t *testing.T) {
	h := setup(t)
	_, err := h.s.RecordSuccess(h.ctx, store.Success{JobID: "job-1", Phase: "extraction", RetryCount: 2, NextPhase: "extraction", Now: t0})
	require.NoError(t, err)
	require.Equal(t, "1:2", h.rdb.HGet(h.ctx, "{t}:j:job-1", "r:extraction").Val())
	before := h.dump()
	events := h.tap()
	for _, rc := range []uint32{0, 1} {
		f := firstFailure()
		f.RetryCount, f.Now = rc, t0.Add(time.Second)
		_, err = h.s.RecordFailure(h.ctx, f)
		require.ErrorIs(t, err, store.ErrConflict)
		require.ErrorContains(t, err, fmt.Sprintf("extraction #%d reported after #2 of the same phase", rc))
	}
	h.requireState(before, "failures reported out of order")
	require.Empty(t, events())
}

// TestEmptyPendingIsNothingPending: a report that ends the pending attempt
// leaves "pd" empty; every script and read takes that as nothing pending.
func TestEmptyPendingIsNothingPending(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	_, err := h.s.RecordSuccess(h.ctx, store.Success{
		JobID: "job-1", Phase: "extraction", RetryCount: 1, LeaseID: leaseL1, NextPhase: "chunking", Now: t0.Add(3 * time.Minute),
	})
	require.NoError(t, err)
	require.Equal(t, "", h.rdb.HGet(h.ctx, "{t}:j:job-1", "pd").Val())
	handedOff := h.dump()

	job, err := h.s.GetJob(h.ctx, "job-1")
	require.NoError(t, err)
	require.Empty(t, job.PendingPhase)
	require.False(t, job.InBackoff())
	require.ErrorIs(t, h.s.ReturnLease(h.ctx, "job-1", leaseL1), store.ErrLeaseNotHeld)
	_, err = h.s.ExtendLease(h.ctx, "job-1", leaseL1, t0.Add(time.Hour), t0.Add(3*time.Minute))
	require.ErrorIs(t, err, store.ErrLeaseNotHeld)
	h.requireState(handedOff, "lease calls on a job with nothing pending")

	events := h.tap()
	_, err = h.s.CancelJob(h.ctx, "job-1", "stop", t0.Add(4*time.Minute))
	require.NoError(t, err)
	want := handedOff.clone()
	j := want["{t}:j:job-1"].(hash)
	j["st"], j["fe"], j["ua"] = "4", "stop", us(4*time.Minute)
	delete(want, "{t}:idx:p:chunking")
	want["{t}:idx:x:chunking"] = zset{{"job-1", usn(4 * time.Minute)}}
	h.requireState(want, "CancelJob with nothing pending")
	require.Empty(t, events(), "no lease was released")
}

// TestPhaseSetAddedOncePerMinute: a Store adds a report's phase to the
// phase set when it has not done so within a minute of report time, so a
// lost set (a flushed Redis) is whole again a minute later.
func TestPhaseSetAddedOncePerMinute(t *testing.T) {
	h := setup(t)
	report := func(id string, at time.Duration) {
		t.Helper()
		f := firstFailure()
		f.JobID, f.Now = id, t0.Add(at)
		f.Verdict.DueAt = f.Now.Add(time.Minute)
		_, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err)
	}
	h.calls("sadd")
	report("job-1", 0)
	require.Equal(t, int64(1), h.calls("sadd"), "a phase new to this Store")
	report("job-2", 59*time.Second)
	_, err := h.s.RecordSuccess(h.ctx, store.Success{JobID: "job-3", Phase: "extraction", Now: t0.Add(30 * time.Second)})
	require.NoError(t, err)
	require.Equal(t, int64(0), h.calls("sadd"), "added within the minute")

	require.NoError(t, h.rdb.Del(h.ctx, "{t}:phases").Err()) // the set is lost
	report("job-4", time.Minute)
	require.Equal(t, int64(1), h.calls("sadd"), "a minute later: added again")
	require.ElementsMatch(t, []string{"extraction"}, h.rdb.SMembers(h.ctx, "{t}:phases").Val())
	page, err := h.s.ListJobs(h.ctx, store.ListQuery{})
	require.NoError(t, err)
	require.Len(t, page.Jobs, 4, "every job of the phase is listed again")

	_, err = h.s.RecordSuccess(h.ctx, store.Success{JobID: "job-5", Phase: "extraction", NextPhase: "chunking", Now: t0.Add(time.Minute)})
	require.NoError(t, err)
	require.Equal(t, int64(1), h.calls("sadd"), "the next phase of a hand-off")
	require.ElementsMatch(t, []string{"chunking", "extraction"}, h.rdb.SMembers(h.ctx, "{t}:phases").Val(), "a set: Redis returns its members in any order")
}
