package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// The failure every attempt but the last reports: a retryable error of the
// specification's kind, with a message of typical length.
const (
	benchErrorType    = "requests.exceptions.ConnectionError"
	benchErrorMessage = "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded (connection reset by peer)"
	benchHTTPStatus   = 503
)

// stallTimeout is how long a run may make no progress before it is
// declared stuck (a lost retry would otherwise hang it until --timeout).
const stallTimeout = 30 * time.Second

// job is the client's record of one job. Its fields are atomics: the worker
// that reports a failure writes them, the stream receiver that gets the
// retry reads them.
type job struct {
	// sent is when the job's latest failure report was sent (Unix ns). The
	// server's "now" for that report, hence its due time minus D, cannot be
	// earlier: this is the client's own bound for "never early".
	sent atomic.Int64
	// expect is the retry_count of the dispatch the job waits for (0: none).
	// A receiver takes a task only by swapping it to 0, so a second
	// dispatch of the same attempt counts as a duplicate.
	expect atomic.Uint32
	// answered is the next_attempt_at retryd answered the latest failure
	// report with (Unix ns), for the summary of an early dispatch.
	answered atomic.Int64
}

// taskRef is a received task on its way from a stream to a worker.
type taskRef struct {
	job   int
	rc    uint32
	id    string
	lease string
}

// runner runs one workload against one retryd.
type runner struct {
	o       options
	cycle   bool // false for the memory point: stop once every retry is pending
	runID   string
	conns   []*grpc.ClientConn
	jobs    []job
	payload *structpb.Struct
	// payloadBytes is the encoded payload's size, subtracted from the
	// memory per pending retry ("payload aside").
	payloadBytes int

	ctx    context.Context
	cancel context.CancelCauseFunc

	tasks        chan taskRef
	nextOriginal atomic.Int64
	acked        atomic.Int64 // attempts acknowledged
	finished     atomic.Int64 // jobs through (completed, or pending for the memory point)
	allDone      chan struct{}
	end          atomic.Int64 // Unix ns when the last job finished

	duplicates    atomic.Int64 // a dispatch of an attempt already received, or of no expected attempt
	foreign       atomic.Int64 // a task of a job this run does not know
	earlyServer   atomic.Int64 // received before the task's own due_at
	earlyClient   atomic.Int64 // received before the failure report was sent + D
	earlyAny      atomic.Int64 // dispatches early by at least one of the two
	earlyMax      atomic.Int64 // ns, the most a dispatch was early by
	earlyMu       sync.Mutex
	earlyExamples []string // the first few early dispatches, with their times
	// aheadCount counts due_at values earlier than the client's report time
	// + D: retryd's clock read earlier than this machine's when it handled
	// the report (with Redis it schedules on Redis's clock as it estimates
	// it). Not an early dispatch by itself; aheadMax is the largest gap, ns.
	aheadCount atomic.Int64
	aheadMax   atomic.Int64

	lagMu sync.Mutex
	lags  []int64 // ns, receive − due_at, one per accepted dispatch
}

func newRunner(o options, conns []*grpc.ClientConn) (*runner, error) {
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	payload, err := structpb.NewStruct(map[string]any{
		"pipeline_job_id": "placeholder-replaced-per-job-0000000000",
		"document_id":     "doc-000000",
		"source_location": "s3://inbox/docs/doc-000000.pdf",
	})
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(payload)
	if err != nil {
		return nil, err
	}
	return &runner{
		o:            o,
		cycle:        o.point != "memory",
		runID:        hex.EncodeToString(id[:]),
		conns:        conns,
		jobs:         make([]job, o.n),
		payload:      payload,
		payloadBytes: len(b),
		tasks:        make(chan taskRef, o.c),
		allDone:      make(chan struct{}),
	}, nil
}

// jobID is job i's id: a UUID-shaped 36-byte string, like a pipeline job id.
func (r *runner) jobID(i int) string {
	return fmt.Sprintf("%s-0000-4000-8000-%012d", r.runID, i)
}

// jobIndex is the inverse of jobID; false for a job of another run.
func (r *runner) jobIndex(id string) (int, bool) {
	const suffix = len("-0000-4000-8000-") + 12
	if len(id) != len(r.runID)+suffix || !strings.HasPrefix(id, r.runID) {
		return 0, false
	}
	i, err := strconv.Atoi(id[len(id)-12:])
	if err != nil || i < 0 || i >= len(r.jobs) {
		return 0, false
	}
	return i, true
}

// openConns dials retryd n times; each connection is one HTTP/2 transport.
func openConns(addr string, n int) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for range n {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			closeConns(conns)
			return nil, err
		}
		c.Connect()
		conns = append(conns, c)
	}
	return conns, nil
}

func closeConns(conns []*grpc.ClientConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// workload runs the workload and returns its wall time (first report sent
// to last job through). stderr gets the progress bar.
func (r *runner) workload(parent context.Context, stderr io.Writer) (time.Duration, error) {
	r.ctx, r.cancel = context.WithCancelCause(parent)
	defer r.cancel(nil)

	// Streams first, so that the first retry finds a worker.
	streamCtx, stopStreams := context.WithCancel(r.ctx)
	var receivers sync.WaitGroup
	if r.cycle {
		for i := range r.o.streams {
			inFlight := r.o.c / r.o.streams
			if i < r.o.c%r.o.streams {
				inFlight++
			}
			stream, err := openDispatch(streamCtx, r.conns[i%len(r.conns)], &retrydv1.DispatchRequest{
				Phases:      []string{r.o.phase},
				WorkerId:    fmt.Sprintf("retrybench-%s-%d", r.runID, i),
				MaxInFlight: uint32(inFlight),
			})
			if err != nil {
				stopStreams()
				receivers.Wait()
				return 0, fmt.Errorf("open Dispatch stream: %w", err)
			}
			receivers.Add(1)
			go func() {
				defer receivers.Done()
				r.receive(stream)
			}()
		}
	}
	defer func() {
		stopStreams()
		receivers.Wait()
	}()

	start := time.Now()
	var workers sync.WaitGroup
	for i := range r.o.c {
		workers.Add(1)
		go func() {
			defer workers.Done()
			r.work(r.conns[i%len(r.conns)])
		}()
	}
	err := r.wait(start, stderr)
	r.cancel(nil)
	workers.Wait()
	if err != nil {
		return 0, err
	}
	return time.Unix(0, r.end.Load()).Sub(start), nil
}

// wait returns when every job is through, the run failed, or it stalled.
func (r *runner) wait(start time.Time, stderr io.Writer) error {
	bar := newProgress(stderr, r.o.progress, r.total())
	defer bar.finish()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(r.o.timeout)
	last, lastChange := int64(-1), time.Now()
	for {
		select {
		case <-r.allDone:
			bar.update(r.acked.Load(), time.Since(start))
			return nil
		case <-r.ctx.Done():
			return context.Cause(r.ctx)
		case <-deadline:
			return fmt.Errorf("the run did not finish within --timeout %v: %s", r.o.timeout, r.unfinished())
		case <-tick.C:
			n := r.acked.Load()
			bar.update(n, time.Since(start))
			if n != last {
				last, lastChange = n, time.Now()
			} else if time.Since(lastChange) > stallTimeout+r.o.delay {
				return fmt.Errorf("no progress for %v: %s", stallTimeout+r.o.delay, r.unfinished())
			}
		}
	}
}

// total is the number of attempts the run reports.
func (r *runner) total() int64 {
	if !r.cycle {
		return int64(r.o.n)
	}
	return int64(r.o.n) * int64(r.o.k+1)
}

// unfinished describes the jobs still waiting, for a stuck run.
func (r *runner) unfinished() string {
	var waiting []string
	n := 0
	for i := range r.jobs {
		if e := r.jobs[i].expect.Load(); e != 0 {
			n++
			if len(waiting) < 5 {
				waiting = append(waiting, fmt.Sprintf("%s waits for retry %d", r.jobID(i), e))
			}
		}
	}
	return fmt.Sprintf("%d of %d jobs through, %d waiting for a dispatch (%s)",
		r.finished.Load(), r.o.n, n, strings.Join(waiting, "; "))
}

// receive reads one Dispatch stream: it checks each task against the
// client's record, measures its lag and hands it to a worker. It never
// blocks on the workers: the task channel holds C tasks, as many as the
// streams may have in flight.
func (r *runner) receive(stream grpc.ClientStream) {
	d := r.o.delay.Nanoseconds()
	lags := make([]int64, 0, r.o.n*r.o.k/r.o.streams+16)
	defer func() {
		r.lagMu.Lock()
		r.lags = append(r.lags, lags...)
		r.lagMu.Unlock()
	}()
	msg := new(rawMessage)
	for {
		if err := stream.RecvMsg(msg); err != nil {
			if r.ctx.Err() == nil && !errors.Is(err, io.EOF) {
				r.cancel(fmt.Errorf("Dispatch stream: %w", err))
			} else if r.ctx.Err() == nil {
				r.cancel(errors.New("retryd ended a Dispatch stream"))
			}
			return
		}
		now := time.Now().UnixNano()
		t, ok, err := parseTask(msg.b)
		if err != nil {
			r.cancel(fmt.Errorf("Dispatch stream: a message does not decode: %w", err))
			return
		}
		if !ok {
			continue // a heartbeat
		}
		i, ok := r.jobIndex(t.jobID)
		if !ok {
			r.foreign.Add(1)
			continue
		}
		j := &r.jobs[i]
		rc := t.retryCount
		if rc == 0 || !j.expect.CompareAndSwap(rc, 0) {
			r.duplicates.Add(1)
			continue
		}
		due := t.dueNanos
		sent := j.sent.Load()
		early := false
		if now < due {
			r.earlyServer.Add(1)
			early = true
		}
		if now < sent+d {
			r.earlyClient.Add(1)
			early = true
		}
		if early {
			r.earlyAny.Add(1)
			storeMax(&r.earlyMax, max(due, sent+d)-now)
			r.earlyExample(t, sent, j.answered.Load(), now)
		}
		if ahead := sent + d - due; ahead > 0 {
			r.aheadCount.Add(1)
			storeMax(&r.aheadMax, ahead)
		}
		lags = append(lags, now-due)
		select {
		case r.tasks <- taskRef{job: i, rc: rc, id: t.jobID, lease: t.leaseID}:
		case <-r.ctx.Done():
			return
		}
	}
}

// storeMax raises m to v.
func storeMax(m *atomic.Int64, v int64) {
	for {
		cur := m.Load()
		if v <= cur || m.CompareAndSwap(cur, v) {
			return
		}
	}
}

// earlyExample keeps the first few early dispatches for the summary.
func (r *runner) earlyExample(t wireTask, sent, answered, received int64) {
	r.earlyMu.Lock()
	defer r.earlyMu.Unlock()
	if len(r.earlyExamples) >= maxExamples {
		return
	}
	ms := func(ns int64) string { return fmt.Sprintf("%+.3f ms", float64(ns)/1e6) }
	r.earlyExamples = append(r.earlyExamples, fmt.Sprintf(
		"%s retry %d: failure reported at %s, due_at = report %s (the report's answer said %s), received at due_at %s (D %v)",
		t.jobID, t.retryCount, time.Unix(0, sent).UTC().Format("15:04:05.000000"),
		ms(t.dueNanos-sent), ms(answered-sent), ms(received-t.dueNanos), r.o.delay))
}

// work is one worker: it runs received retries first (so that the backlog
// of original attempts does not hold leases back), then original attempts,
// until every job is through.
func (r *runner) work(conn *grpc.ClientConn) {
	w := &worker{
		r:    r,
		conn: conn,
		fail: &retrydv1.ReportFailureRequest{
			Phase: r.o.phase, ErrorType: benchErrorType, ErrorMessage: benchErrorMessage, HttpStatus: benchHTTPStatus,
		},
		failRes: new(retrydv1.ReportFailureResponse),
		succ:    &retrydv1.ReportSuccessRequest{Phase: r.o.phase},
		succRes: new(retrydv1.ReportSuccessResponse),
	}
	for {
		select {
		case t := <-r.tasks:
			if !w.task(t) {
				return
			}
			continue
		default:
		}
		if i := r.nextOriginal.Add(1) - 1; i < int64(r.o.n) {
			if !w.original(int(i)) {
				return
			}
			continue
		}
		select {
		case t := <-r.tasks:
			if !w.task(t) {
				return
			}
		case <-r.ctx.Done():
			return
		}
	}
}

// worker holds one worker's reusable messages.
type worker struct {
	r       *runner
	conn    *grpc.ClientConn
	fail    *retrydv1.ReportFailureRequest
	failRes *retrydv1.ReportFailureResponse
	succ    *retrydv1.ReportSuccessRequest
	succRes *retrydv1.ReportSuccessResponse
}

// original reports the failure of job i's original attempt, with the
// job's payload and labels.
func (w *worker) original(i int) bool {
	id := w.r.jobID(i)
	doc := fmt.Sprintf("doc-%06d", i)
	w.fail.Payload = w.r.payload
	w.fail.Labels = map[string]string{"document_id": doc, "source_name": "retrybench"}
	ok := w.failure(i, id, 0, "")
	w.fail.Payload, w.fail.Labels = nil, nil
	if ok && !w.r.cycle {
		w.r.jobThrough()
	}
	return ok
}

// task reports a received retry: a failure until the job has failed K
// times, then a success.
func (w *worker) task(t taskRef) bool {
	if int(t.rc) < w.r.o.k {
		return w.failure(t.job, t.id, t.rc, t.lease)
	}
	w.succ.JobId, w.succ.RetryCount, w.succ.LeaseId = t.id, t.rc, t.lease
	if err := w.conn.Invoke(w.r.ctx, retrydv1.RetryService_ReportSuccess_FullMethodName, w.succ, w.succRes); err != nil {
		w.r.fatal(fmt.Errorf("ReportSuccess of %s retry_count %d: %w", t.id, t.rc, err))
		return false
	}
	if st := w.succRes.GetState(); st != retrydv1.JobState_JOB_STATE_COMPLETED {
		w.r.fatal(fmt.Errorf("ReportSuccess of %s retry_count %d left the job %v, want completed", t.id, t.rc, st))
		return false
	}
	w.r.acked.Add(1)
	w.r.jobThrough()
	return true
}

// failure reports a failed attempt and checks that retryd schedules the
// next one exactly D later.
func (w *worker) failure(i int, id string, rc uint32, lease string) bool {
	j := &w.r.jobs[i]
	if w.r.cycle {
		j.expect.Store(rc + 1)
	}
	j.sent.Store(time.Now().UnixNano())
	w.fail.JobId, w.fail.RetryCount, w.fail.LeaseId = id, rc, lease
	if err := w.conn.Invoke(w.r.ctx, retrydv1.RetryService_ReportFailure_FullMethodName, w.fail, w.failRes); err != nil {
		w.r.fatal(fmt.Errorf("ReportFailure of %s retry_count %d: %w", id, rc, err))
		return false
	}
	res := w.failRes
	if res.GetDecision() != retrydv1.Decision_DECISION_RETRY || res.GetNextRetryCount() != rc+1 || res.GetDelay().AsDuration() != w.r.o.delay {
		w.r.fatal(fmt.Errorf("retryd answered the failure of %s retry_count %d with %v, retry %d after %v (%q); "+
			"the workload needs a retry after exactly --delay %v: run retryd with --jitter 0 --retry-delays %v --max-retries %d or more",
			id, rc, res.GetDecision(), res.GetNextRetryCount(), res.GetDelay().AsDuration(), res.GetReason(),
			w.r.o.delay, w.r.o.delay, w.r.o.k))
		return false
	}
	if at := res.GetNextAttemptAt(); at != nil {
		j.answered.Store(at.GetSeconds()*1e9 + int64(at.GetNanos()))
	}
	w.r.acked.Add(1)
	return true
}

// jobThrough counts a finished job and ends the run after the last.
func (r *runner) jobThrough() {
	if r.finished.Add(1) == int64(r.o.n) {
		r.end.Store(time.Now().UnixNano())
		close(r.allDone)
	}
}

// fatal ends the run with err, unless it is already ending.
func (r *runner) fatal(err error) {
	if r.ctx.Err() == nil {
		r.cancel(err)
	}
}

// startProfiles starts the CPU profile of the run (--cpuprofile); stop writes the
// allocation profile.
func startProfiles(o options) (stop func() error, err error) {
	var cpu *os.File
	if o.cpuProfile != "" {
		cpu, err = os.Create(o.cpuProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(cpu); err != nil {
			_ = cpu.Close()
			return nil, err
		}
	}
	return func() error {
		var errs []error
		if cpu != nil {
			pprof.StopCPUProfile()
			errs = append(errs, cpu.Close())
		}
		if o.memProfile != "" {
			f, err := os.Create(o.memProfile)
			if err != nil {
				return err
			}
			runtime.GC()
			errs = append(errs, pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
		}
		return errors.Join(errs...)
	}, nil
}
