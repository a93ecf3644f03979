package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// echoScript answers {ARGV[1], the key's new count}, or an error reply
// when ARGV[1] is "fail", so that every caller can check it got its own
// reply.
var echoScript = redis.NewScript(`
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
return {ARGV[1], redis.call('INCR', KEYS[1])}
`)

// holdScript is the script of the call that holdBatch holds (another
// script than echoScript, so that its EVAL does not load echoScript).
var holdScript = redis.NewScript(`return {redis.call('INCR', KEYS[1])}`)

// gate is a go-redis hook that holds every command and pipeline while
// closed, and records the size of each pipeline sent.
type gate struct {
	mu     sync.Mutex
	held   chan struct{} // nil: open
	holds  atomic.Int64  // sends waiting at the gate
	piped  []int
	single atomic.Int64
	panics atomic.Bool // pipelines panic
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = make(chan struct{})
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
}

func (g *gate) wait() {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != nil {
		g.holds.Add(1)
		<-held
		g.holds.Add(-1)
	}
}

func (g *gate) pipelines() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]int(nil), g.piped...)
}

func (g *gate) DialHook(next redis.DialHook) redis.DialHook { return next }

func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			g.single.Add(1)
			g.wait()
		}
		return next(ctx, cmd)
	}
}

func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if name := cmds[0].Name(); name != "evalsha" && name != "eval" {
			return next(ctx, cmds) // the connection's handshake
		}
		g.mu.Lock()
		g.piped = append(g.piped, len(cmds))
		g.mu.Unlock()
		g.wait()
		if g.panics.Load() {
			panic("test panic in a pipeline")
		}
		return next(ctx, cmds)
	}
}

// batchHarness is a redis-server, a client with a gate and a batcher with
// one batch in flight (so that which calls share a batch is known).
type batchHarness struct {
	t      *testing.T
	srv    *testredis.Server
	rdb    redis.UniversalClient
	gate   *gate
	b      *batcher
	prefix string // of the calls' keys
}

func newBatchHarness(t *testing.T) *batchHarness {
	t.Helper()
	t.Parallel()
	srv := testredis.Start(t)
	// No retries: a test of a dead Redis need not wait out go-redis's
	// redials (5 per connection, 4 tries per command by default).
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: srv.Addr(), DialTimeout: time.Second, MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	g := &gate{}
	rdb.AddHook(g)
	return startBatcher(t, srv, rdb, g, "")
}

// startBatcher loads the test scripts and starts a batcher on rdb, whose
// hooks include g.
func startBatcher(t *testing.T, srv *testredis.Server, rdb redis.UniversalClient, g *gate, prefix string) *batchHarness {
	t.Helper()
	require.NoError(t, echoScript.Load(t.Context(), rdb).Err())
	require.NoError(t, holdScript.Load(t.Context(), rdb).Err())
	b := newBatcher(rdb)
	b.maxInFlight = 1
	t.Cleanup(b.close)
	return &batchHarness{t: t, srv: srv, rdb: rdb, gate: g, b: b, prefix: prefix}
}

// queued is the number of calls waiting for a batch.
func (h *batchHarness) queued() int {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	return len(h.b.queue)
}

// holdBatch closes the gate and sends one call, which the sender then holds
// at the gate: calls made until release queue up and go out as the next
// batch, together. It returns the held call's result.
func (h *batchHarness) holdBatch() (release func(), result <-chan error) {
	h.t.Helper()
	h.gate.close()
	res := make(chan error, 1)
	go func() {
		_, err := h.b.run(context.Background(), holdScript, []string{h.prefix + "held"}, nil)
		res <- err
	}()
	require.Eventually(h.t, func() bool { return h.gate.holds.Load() == 1 }, 10*time.Second, time.Millisecond)
	return h.gate.open, res
}

// reply is one caller's outcome.
type reply struct {
	res []any
	err error
}

// callAll starts n calls of echoScript with argument arg(i) on key
// "k:<i>" and, once all of them are queued behind the held batch, returns
// their result channels.
func (h *batchHarness) callAll(ctxs []context.Context, arg func(i int) string) []chan reply {
	h.t.Helper()
	out := make([]chan reply, len(ctxs))
	for i, ctx := range ctxs {
		out[i] = make(chan reply, 1)
		go func() {
			res, err := h.b.run(ctx, echoScript, []string{fmt.Sprintf("%sk:%d", h.prefix, i)}, []any{arg(i)})
			out[i] <- reply{res, err}
		}()
	}
	require.Eventually(h.t, func() bool { return h.queued() == len(ctxs) }, 10*time.Second, time.Millisecond)
	return out
}

func backgrounds(n int) []context.Context {
	ctxs := make([]context.Context, n)
	for i := range ctxs {
		ctxs[i] = context.Background()
	}
	return ctxs
}

// TestBatchOwnReplies: calls queued behind a batch in flight go out as one
// pipeline, and each gets its own reply, or its own error reply without
// failing the others.
func TestBatchOwnReplies(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	const n = 50
	arg := func(i int) string {
		if i%7 == 3 {
			return "fail"
		}
		return fmt.Sprintf("call-%d", i)
	}
	replies := h.callAll(backgrounds(n), arg)
	release()
	require.NoError(t, <-held)
	for i, ch := range replies {
		r := <-ch
		if arg(i) == "fail" {
			require.ErrorContains(t, r.err, "asked to fail", "call %d", i)
			continue
		}
		require.NoError(t, r.err, "call %d", i)
		require.Equal(t, []any{arg(i), int64(1)}, r.res, "call %d", i)
	}
	require.Equal(t, []int{n}, h.gate.pipelines(), "the queued calls went out as one pipeline")
	require.Equal(t, int64(1), h.gate.single.Load(), "the lone first call went out without a pipeline")
}

// TestBatchCluster: on Redis Cluster a batch is a cluster pipeline (its
// keys share a hash slot, so it goes to one node), with the same replies,
// error replies and NOSCRIPT recovery.
func TestBatchCluster(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t, testredis.Cluster())
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	g := &gate{}
	rdb.AddHook(g)
	h := startBatcher(t, srv, rdb, g, "{t}:")
	for _, flush := range []bool{false, true} {
		release, held := h.holdBatch()
		arg := func(i int) string {
			if i == 5 {
				return "fail"
			}
			return fmt.Sprint(i)
		}
		replies := h.callAll(backgrounds(20), arg)
		if flush {
			require.NoError(t, rdb.ForEachMaster(t.Context(), func(ctx context.Context, c *redis.Client) error {
				return c.ScriptFlush(ctx).Err()
			}))
		}
		release()
		require.NoError(t, <-held)
		for i, ch := range replies {
			r := <-ch
			if i == 5 {
				require.ErrorContains(t, r.err, "asked to fail")
				continue
			}
			require.NoError(t, r.err, "call %d", i)
			n := int64(1)
			if flush {
				n = 2
			}
			require.Equal(t, []any{fmt.Sprint(i), n}, r.res, "call %d", i)
		}
	}
	// Every batch of the calls was one pipeline: 20, then 20 EVALSHAs and
	// 20 EVALs after the flush.
	require.Equal(t, []int{20, 20, 20}, h.gate.pipelines())
}

// TestBatchNoScript: after SCRIPT FLUSH a batch's EVALSHAs fail with
// NOSCRIPT; they are sent again with EVAL, and every call gets its reply.
func TestBatchNoScript(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	replies := h.callAll(backgrounds(20), func(i int) string { return fmt.Sprint(i) })
	require.NoError(t, h.rdb.ScriptFlush(context.Background()).Err())
	release()
	require.NoError(t, <-held, "a lone call falls back to EVAL")
	for i, ch := range replies {
		r := <-ch
		require.NoError(t, r.err, "call %d", i)
		require.Equal(t, []any{fmt.Sprint(i), int64(1)}, r.res, "call %d", i)
	}
	// One pipeline of EVALSHAs, then one of EVALs.
	require.Equal(t, []int{20, 20}, h.gate.pipelines())
}

// TestBatchNoScriptUnderLoad: SCRIPT FLUSH while concurrent reports run
// through the store fails none of them.
func TestBatchNoScriptUnderLoad(t *testing.T) {
	h := setup(t)
	ctx := h.ctx
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	stop := make(chan struct{})
	for w := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f := benchFailure(w*100000+i, t0)
				if _, err := h.s.RecordFailure(ctx, f); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 5 {
		before := commandCalls(t, h.rdb, "eval")
		require.NoError(t, h.rdb.ScriptFlush(ctx).Err())
		require.Eventually(t, func() bool { return commandCalls(t, h.rdb, "eval") > before }, 10*time.Second, time.Millisecond,
			"reports keep running and reload the script")
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// TestBatchCanceledCaller: a queued caller whose context ends returns at
// once with its context's error and is not sent; the others' batch runs.
func TestBatchCanceledCaller(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	ctxs := backgrounds(10)
	canceled, cancel := context.WithCancel(context.Background())
	ctxs[4] = canceled
	replies := h.callAll(ctxs, func(i int) string { return fmt.Sprint(i) })
	cancel()
	r := <-replies[4]
	require.ErrorIs(t, r.err, context.Canceled, "the canceled caller stops waiting while the batch is held")
	release()
	require.NoError(t, <-held)
	for i, ch := range replies {
		if i == 4 {
			continue
		}
		r := <-ch
		require.NoError(t, r.err, "call %d", i)
		require.Equal(t, []any{fmt.Sprint(i), int64(1)}, r.res)
	}
	// The canceled call left the queue before its batch went out.
	require.Equal(t, []int{9}, h.gate.pipelines())
	require.Zero(t, h.rdb.Exists(context.Background(), "k:4").Val())
	// A caller whose context has already ended sends nothing.
	_, err := h.b.run(canceled, echoScript, []string{"never"}, []any{"x"})
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, h.rdb.Exists(context.Background(), "never").Val())
}

// TestBatchCancelRaces: many callers whose contexts end at random moments
// (queued, told to lead, in a batch on its way): every caller returns,
// each with its own reply or its context's error, and no slot is lost.
func TestBatchCancelRaces(t *testing.T) {
	h := newBatchHarness(t)
	h.b.maxInFlight = batchesInFlight
	var wg sync.WaitGroup
	var ok, canceled atomic.Int64
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				arg := fmt.Sprintf("%d-%d", g, i)
				// Timeouts from 0 to 2ms: some end before the call is
				// queued, some while queued, some after it was sent.
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((g*25+i)%9)*250*time.Microsecond)
				res, err := h.b.run(ctx, echoScript, []string{"k:" + arg}, []any{arg})
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("call %s: %v", arg, err)
					}
					canceled.Add(1)
					continue
				}
				if res[0] != arg {
					t.Errorf("call %s got %v", arg, res)
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d answered, %d gave up", ok.Load(), canceled.Load())
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	require.Zero(t, h.b.inFlight, "every slot was given back")
	require.Empty(t, h.b.queue)
}

// TestBatchPanic: a panic while a batch is sent goes up the leader's call;
// the batch's other callers get an error, and the slot is free again.
func TestBatchPanic(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	h.gate.panics.Store(true)
	const n = 5
	results := make(chan error, n)
	for i := range n {
		go func() {
			defer func() {
				if p := recover(); p != nil {
					results <- fmt.Errorf("leader panicked: %v", p)
				}
			}()
			_, err := h.b.run(context.Background(), echoScript, []string{fmt.Sprintf("k:%d", i)}, []any{"x"})
			results <- err
		}()
	}
	require.Eventually(t, func() bool { return h.queued() == n }, 10*time.Second, time.Millisecond)
	release()
	require.NoError(t, <-held)
	var leaders, others int
	for range n {
		err := <-results
		require.Error(t, err)
		switch {
		case strings.Contains(err.Error(), "leader panicked: test panic"):
			leaders++
		case strings.Contains(err.Error(), "panic while sending a batch"):
			others++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	require.Equal(t, 1, leaders)
	require.Equal(t, n-1, others)
	h.gate.panics.Store(false)
	res, err := h.b.run(context.Background(), echoScript, []string{"after"}, []any{"after"})
	require.NoError(t, err, "the slot was passed on")
	require.Equal(t, []any{"after", int64(1)}, res)
}

// TestBatchStoreCanceled: through the store, a canceled caller's error
// wraps store.ErrUnavailable and its context's error.
func TestBatchStoreCanceled(t *testing.T) {
	h := setup(t)
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	_, err := h.s.RecordFailure(ctx, benchFailure(1, t0))
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorIs(t, err, context.Canceled)
}

// TestBatchRedisKilled: when Redis dies under a batch, every caller of it
// and of the calls behind it gets an error promptly, which the store
// reports as store.ErrUnavailable.
func TestBatchRedisKilled(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	replies := h.callAll(backgrounds(30), func(i int) string { return fmt.Sprint(i) })
	h.srv.Kill()
	start := time.Now()
	release()
	s := &Store{}
	require.ErrorIs(t, s.wrap("test", <-held), store.ErrUnavailable)
	for i, ch := range replies {
		r := <-ch
		require.Error(t, r.err, "call %d", i)
		require.ErrorIs(t, s.wrap("test", r.err), store.ErrUnavailable, "call %d: %v", i, r.err)
	}
	require.Less(t, time.Since(start), 10*time.Second, "answered without waiting out long timeouts")
}

// TestBatchStoreConcurrent: 200 goroutines report different jobs through
// one store at once; every one gets its own verdict back, and a repeat of
// each report returns that job's stored verdict.
func TestBatchStoreConcurrent(t *testing.T) {
	h := setup(t)
	const n = 200
	failure := func(i int) store.Failure {
		f := benchFailure(i, t0)
		f.Verdict.Reason = fmt.Sprintf("reason of job %d", i)
		f.Verdict.Delay = time.Duration(i+1) * time.Second
		f.Verdict.DueAt = t0.Add(f.Verdict.Delay)
		return f
	}
	for _, round := range []string{"first", "repeat"} {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f := failure(i)
				res, err := h.s.RecordFailure(h.ctx, f)
				switch {
				case err != nil:
					errs[i] = err
				case res.Duplicate != (round == "repeat"):
					errs[i] = fmt.Errorf("duplicate %v", res.Duplicate)
				case res.Verdict.Reason != f.Verdict.Reason || res.Verdict.Delay != f.Verdict.Delay || !res.Verdict.DueAt.Equal(f.Verdict.DueAt):
					errs[i] = fmt.Errorf("verdict %+v, want %+v", res.Verdict, f.Verdict)
				}
			}()
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...), round)
	}
}

// TestBatchClose: Close answers the calls already queued before it
// returns; calls after it fail with store.ErrUnavailable.
func TestBatchClose(t *testing.T) {
	h := newBatchHarness(t)
	release, held := h.holdBatch()
	replies := h.callAll(backgrounds(5), func(i int) string { return fmt.Sprint(i) })
	closed := make(chan struct{})
	go func() {
		h.b.close()
		close(closed)
	}()
	release()
	<-closed
	// Once close returns, the queued calls' scripts have run.
	for i := range replies {
		require.Equal(t, "1", h.rdb.Get(context.Background(), fmt.Sprintf("k:%d", i)).Val(), "call %d ran before close returned", i)
	}
	require.Zero(t, h.queued())
	require.NoError(t, <-held)
	for i, ch := range replies {
		r := <-ch
		require.NoError(t, r.err, "call %d", i)
	}
	_, err := h.b.run(context.Background(), echoScript, []string{"late"}, []any{"late"})
	require.ErrorIs(t, err, redis.ErrClosed)
}

// TestBatchStoreClose: a store's changes after Close fail with
// store.ErrUnavailable, also when the store does not own its client.
func TestBatchStoreClose(t *testing.T) {
	h := setup(t)
	require.NoError(t, h.s.Close())
	_, err := h.s.RecordFailure(h.ctx, benchFailure(1, t0))
	require.ErrorIs(t, err, store.ErrUnavailable)

	s := New(h.rdb, Options{Prefix: "t"})
	require.NoError(t, s.Close())
	_, err = s.RecordFailure(h.ctx, benchFailure(1, t0))
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorIs(t, err, redis.ErrClosed)
}

// TestBatchOutageAnswersByDeadline: with go-redis's default retries, which
// redial a dead Redis for a second or more, a caller is answered by its
// deadline: a batch ends at the latest deadline of its calls, and the
// calls queued behind a batch that could not reach Redis fail with it,
// unsent, instead of waiting for a batch (and its redials) of their own.
func TestBatchOutageAnswersByDeadline(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: srv.Addr()}) // go-redis's default retries
	t.Cleanup(func() { _ = rdb.Close() })
	g := &gate{}
	rdb.AddHook(g)
	h := startBatcher(t, srv, rdb, g, "")
	s := &Store{}

	release, held := h.holdBatch()
	deadline := time.Now().Add(5 * time.Second)
	ctxs := make([]context.Context, 30)
	for i := range ctxs {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		t.Cleanup(cancel)
		ctxs[i] = ctx
	}
	replies := h.callAll(ctxs, func(i int) string { return fmt.Sprint(i) })
	srv.Kill()
	release()
	require.ErrorIs(t, s.wrap("test", <-held), store.ErrUnavailable)
	failed := time.Now()
	for i, ch := range replies {
		r := <-ch
		require.ErrorIs(t, s.wrap("test", r.err), store.ErrUnavailable, "call %d: %v", i, r.err)
	}
	require.Less(t, time.Since(failed), time.Second, "the queued calls failed with the held batch, not after redials of their own")
	require.Empty(t, g.pipelines(), "the queued calls were not sent")

	// A lone call against the dead Redis ends at its deadline, not after
	// go-redis's redials.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.b.run(ctx, echoScript, []string{"k:lone"}, []any{"x"})
	require.ErrorIs(t, s.wrap("test", err), store.ErrUnavailable)
	require.Less(t, time.Since(start), time.Second, "bounded by its 300ms deadline")
}
