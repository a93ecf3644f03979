package fault_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/store"
)

// ack is one acknowledged report (the RPC answered OK).
type ack struct {
	job      string
	rc       uint32
	success  bool
	decision retrydv1.Decision // failures
	leaseID  string
	via      string // the replica that acknowledged it
	at       time.Time
}

// delivery is one task a worker received.
type delivery struct {
	rc      uint32
	leaseID string
	worker  string
	via     string
	at      time.Time
}

// rpc is one report call, for the checks on what was answered when.
type rpc struct {
	start, end time.Time
	code       codes.Code
	via        string
}

// ledger is what the workers and producers saw: every acknowledged report,
// every delivery, every refusal and every unexpected error. The
// conservation check holds the store to it.
type ledger struct {
	mu         sync.Mutex
	acked      map[string][]ack
	attempted  map[string]bool // first reports sent, acknowledged or not
	canceled   map[string]bool
	deliveries map[string][]delivery
	rpcs       []rpc
	rejected   []rejection // FAILED_PRECONDITION answers to reports
	unexpected []string    // any other error than UNAVAILABLE / DEADLINE_EXCEEDED
}

// rejection is a worker's report a replica refused (FAILED_PRECONDITION):
// legitimate only when the job was canceled meanwhile or the lease had
// expired and been reaped.
type rejection struct {
	job     string
	rc      uint32
	leaseID string
	err     string
}

func newLedger() *ledger {
	return &ledger{
		acked: map[string][]ack{}, attempted: map[string]bool{}, canceled: map[string]bool{},
		deliveries: map[string][]delivery{},
	}
}

func (l *ledger) addAck(a ack) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked[a.job] = append(l.acked[a.job], a)
}

func (l *ledger) addDelivery(job string, d delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deliveries[job] = append(l.deliveries[job], d)
}

func (l *ledger) addRPC(r rpc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rpcs = append(l.rpcs, r)
}

func (l *ledger) note(list *[]string, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*list = append(*list, fmt.Sprintf(format, args...))
}

// loadConfig shapes the steady load of a fault test.
type loadConfig struct {
	// prefix starts every job id.
	prefix string
	// producers report new first failures, each one per interval.
	producers int
	interval  time.Duration
	// workers is the number of Dispatch streams per replica.
	workers     int
	maxInFlight uint32
	// lease is the lease each stream asks for.
	lease time.Duration
	// work is how long a worker works on a task before it reports; tasks
	// of a stream are worked on concurrently (up to maxInFlight).
	work time.Duration
	// cancelEvery cancels every n-th acknowledged job (0: none).
	cancelEvery int
	// padding adds a string of that many bytes to each payload.
	padding int
}

// load runs producers and workers against a set of replicas: the traffic
// of a pipeline whose workers fail some attempts (retried, or given up),
// succeed the others, and whose operators cancel a few jobs. Every call
// goes to a live replica and moves on to the next one when a replica does
// not answer (UNAVAILABLE), as a client with several endpoints does.
type load struct {
	t      *testing.T
	cfg    loadConfig
	procs  []*proc
	ledger *ledger

	drain    atomic.Bool  // workers now succeed every task
	next     atomic.Int64 // job counter
	rr       atomic.Int64 // round-robin start
	handling atomic.Int64 // tasks received and not yet answered

	stopProducers, stopWorkers context.CancelFunc
	producers, workers         sync.WaitGroup
	cancels                    chan string
}

// startLoad starts the producers, the workers and the canceler.
func startLoad(t *testing.T, cfg loadConfig, procs []*proc) *load {
	t.Helper()
	l := &load{t: t, cfg: cfg, procs: procs, ledger: newLedger(), cancels: make(chan string, 1024)}
	pctx, stopP := context.WithCancel(context.Background())
	wctx, stopW := context.WithCancel(context.Background())
	l.stopProducers, l.stopWorkers = stopP, stopW
	for i := range cfg.producers {
		l.producers.Add(1)
		go l.produce(pctx, i)
	}
	for i, p := range procs {
		for w := range cfg.workers {
			l.workers.Add(1)
			go l.work(wctx, i, fmt.Sprintf("%s-w%d", p.name, w))
		}
	}
	l.workers.Add(1)
	go l.cancel(wctx)
	t.Cleanup(l.stop)
	return l
}

// stop ends everything (idempotent).
func (l *load) stop() {
	l.stopProducers()
	l.producers.Wait()
	l.stopWorkers()
	l.workers.Wait()
}

// live returns the replicas still running, starting at the round-robin
// position or at the preferred one.
func (l *load) live(prefer int) []*proc {
	out := make([]*proc, 0, len(l.procs))
	for i := range l.procs {
		p := l.procs[(prefer+i)%len(l.procs)]
		if p.alive() {
			out = append(out, p)
		}
	}
	return out
}

// errRefused is a report a replica answered with FAILED_PRECONDITION.
var errRefused = errors.New("refused")

// call sends one request through the replicas, starting with prefer, until
// one answers it, or ctx ends. UNAVAILABLE and DEADLINE_EXCEEDED move on to
// the next replica (the request was not acknowledged; reports are
// idempotent). It returns the replica that answered and errRefused for a
// FAILED_PRECONDITION, or ctx's error.
func (l *load) call(ctx context.Context, prefer int, do func(ctx context.Context, p *proc) error) (*proc, error) {
	for attempt := 0; ; attempt++ {
		procs := l.live(prefer + attempt)
		if len(procs) == 0 {
			return nil, errors.New("no replica left")
		}
		p := procs[0]
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		start := time.Now()
		err := do(cctx, p)
		cancel()
		code := status.Code(err)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		l.ledger.addRPC(rpc{start: start, end: time.Now(), code: code, via: p.name})
		switch code {
		case codes.OK:
			return p, nil
		case codes.Unavailable, codes.DeadlineExceeded:
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(min(attempt+1, 5)) * 10 * time.Millisecond):
			}
		case codes.FailedPrecondition:
			return p, fmt.Errorf("%w: %v", errRefused, err)
		default:
			return p, err
		}
	}
}

// produce reports first failures of new jobs, one per interval.
func (l *load) produce(ctx context.Context, n int) {
	defer l.producers.Done()
	tick := time.NewTicker(l.cfg.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		seq := l.next.Add(1)
		id := fmt.Sprintf("%s-%05d", l.cfg.prefix, seq)
		payload, _ := structpb.NewStruct(map[string]any{"document_id": id, "producer": float64(n), "padding": strings.Repeat("x", l.cfg.padding)})
		l.ledger.mu.Lock()
		l.ledger.attempted[id] = true
		l.ledger.mu.Unlock()
		var resp *retrydv1.ReportFailureResponse
		p, err := l.call(ctx, int(l.rr.Add(1)), func(ctx context.Context, p *proc) error {
			var err error
			resp, err = p.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
				JobId: id, Phase: "extraction", ErrorType: "requests.exceptions.ConnectionError",
				ErrorMessage: "connection reset", Payload: payload, Labels: map[string]string{"document_id": id},
			})
			return err
		})
		switch {
		case err == nil:
			l.ledger.addAck(ack{job: id, decision: resp.GetDecision(), via: p.name, at: time.Now()})
			if l.cfg.cancelEvery > 0 && seq%int64(l.cfg.cancelEvery) == 0 {
				select {
				case l.cancels <- id:
				default:
				}
			}
		case ctx.Err() != nil:
			return
		default:
			l.ledger.note(&l.ledger.unexpected, "ReportFailure %s: %v", id, err)
		}
	}
}

// outcome decides, per job and attempt, what the worker reports: most
// attempts succeed; some fail with a retryable error (retried) or a
// non-retryable one (given up). Once draining, everything succeeds.
func (l *load) outcome(job string, rc uint32) (success bool, errorType string) {
	if l.drain.Load() {
		return true, ""
	}
	h := fnv.New32a()
	_, _ = io.WriteString(h, job)
	switch v := h.Sum32(); {
	case v%5 == 0 && rc < 3:
		return false, "Timeout"
	case v%13 == 1:
		return false, "ValidationError"
	}
	return true, ""
}

// work holds one Dispatch stream (reconnecting to another replica when
// its replica goes away) and answers every task it receives.
func (l *load) work(ctx context.Context, home int, name string) {
	defer l.workers.Done()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		procs := l.live(home + attempt)
		if len(procs) == 0 {
			return
		}
		p := procs[0]
		// The worker id names the replica too, so that the leases a
		// replica handed out can be told apart after it died.
		worker := name + "@" + p.name
		stream, err := p.retry.Dispatch(ctx, &retrydv1.DispatchRequest{
			Phases: []string{"extraction"}, WorkerId: worker, MaxInFlight: l.cfg.maxInFlight,
			LeaseDuration: durationpb.New(l.cfg.lease),
		})
		if err == nil {
			for {
				msg, err := stream.Recv()
				if err != nil {
					break
				}
				if task := msg.GetTask(); task != nil {
					l.handling.Add(1)
					l.workers.Add(1)
					go func() {
						defer l.workers.Done()
						defer l.handling.Add(-1)
						l.handle(ctx, p, worker, task)
					}()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// handle reports one task's outcome, to the replica that sent it first.
func (l *load) handle(ctx context.Context, from *proc, worker string, task *retrydv1.Task) {
	job, rc := task.GetJobId(), task.GetRetryCount()
	l.ledger.addDelivery(job, delivery{rc: rc, leaseID: task.GetLeaseId(), worker: worker, via: from.name, at: time.Now()})
	select {
	case <-ctx.Done():
		return
	case <-time.After(l.cfg.work):
	}
	success, errorType := l.outcome(job, rc)
	prefer := 0
	for i, p := range l.procs {
		if p == from {
			prefer = i
		}
	}
	var resp *retrydv1.ReportFailureResponse
	p, err := l.call(ctx, prefer, func(ctx context.Context, p *proc) error {
		if success {
			_, err := p.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
				JobId: job, Phase: task.GetPhase(), RetryCount: rc, LeaseId: task.GetLeaseId(),
			})
			return err
		}
		var err error
		resp, err = p.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: job, Phase: task.GetPhase(), RetryCount: rc, LeaseId: task.GetLeaseId(),
			ErrorType: errorType, ErrorMessage: "attempt failed",
		})
		return err
	})
	switch {
	case err == nil:
		a := ack{job: job, rc: rc, success: success, leaseID: task.GetLeaseId(), via: p.name, at: time.Now()}
		if !success {
			a.decision = resp.GetDecision()
		}
		l.ledger.addAck(a)
	case errors.Is(err, errRefused):
		l.ledger.mu.Lock()
		l.ledger.rejected = append(l.ledger.rejected, rejection{job: job, rc: rc, leaseID: task.GetLeaseId(), err: err.Error()})
		l.ledger.mu.Unlock()
	case ctx.Err() != nil:
	default:
		l.ledger.note(&l.ledger.unexpected, "report of %s #%d: %v", job, rc, err)
	}
}

// cancel cancels the jobs the producers pick, like an operator would.
func (l *load) cancel(ctx context.Context) {
	defer l.workers.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-l.cancels:
			_, err := l.call(ctx, int(l.rr.Add(1)), func(ctx context.Context, p *proc) error {
				_, err := p.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: id, Reason: "operator"})
				return err
			})
			switch {
			case err == nil:
				l.ledger.mu.Lock()
				l.ledger.canceled[id] = true
				l.ledger.mu.Unlock()
			case errors.Is(err, errRefused), ctx.Err() != nil:
				// Completed before the cancel: nothing to cancel.
			default:
				l.ledger.note(&l.ledger.unexpected, "CancelJob %s: %v", id, err)
			}
		}
	}
}

// settle stops the producers, lets the workers succeed everything from
// now on, and waits until no job is processing (every retry dispatched and
// reported, every expired lease reaped and its retry run) and no worker is
// answering a task. Then it stops the workers.
func (l *load) settle(t *testing.T, st store.Store, within time.Duration) {
	t.Helper()
	l.stopProducers()
	l.producers.Wait()
	l.drain.Store(true)
	deadline := time.Now().Add(within)
	for {
		page, err := st.ListJobs(context.Background(), store.ListQuery{State: store.StateProcessing, Limit: 5})
		if err == nil && len(page.Jobs) == 0 && l.handling.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			var ids []string
			for _, j := range page.Jobs {
				ids = append(ids, fmt.Sprintf("%s(pending %s #%d lease %q due %v)", j.ID, j.PendingPhase, j.PendingRetryCount, j.LeaseID, j.DueAt))
			}
			t.Fatalf("jobs still processing %v after %v: %v (err %v)", within, ids, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.stopWorkers()
	l.workers.Wait()
}

// requireClean fails on any unexpected RPC error, and on any refused
// report that is not explained by a cancel or by a reaped lease.
func (l *load) requireClean(t *testing.T, st store.Store) {
	t.Helper()
	l.ledger.mu.Lock()
	unexpected := append([]string(nil), l.ledger.unexpected...)
	rejected := append([]rejection(nil), l.ledger.rejected...)
	canceled := maps.Clone(l.ledger.canceled)
	l.ledger.mu.Unlock()
	require.Empty(t, unexpected, "unexpected RPC errors")
	for _, r := range rejected {
		if canceled[r.job] {
			continue
		}
		j, err := st.GetJob(context.Background(), r.job)
		require.NoError(t, err)
		reaped := false
		for _, a := range j.Attempts {
			if a.RetryCount == r.rc && a.ErrorType == "LeaseExpired" {
				reaped = true
			}
		}
		require.True(t, reaped, "the report of %s #%d (lease %s) was refused, yet the job was not canceled and the lease not reaped: %s",
			r.job, r.rc, r.leaseID, r.err)
	}
}
