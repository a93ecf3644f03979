package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher sends the scripts of concurrent calls to Redis together: while a
// batch is on its way, the calls that arrive queue up, and the next batch
// takes all of them as one pipeline (one write and, mostly, one read on
// each side instead of one per call; one pool Get and its health check).
// It is the Redis counterpart of boltstore's group commit
// (store/boltstore/commit.go), timer-free like it: a call that finds a
// free slot goes out at once, so a lone call pays nothing for batching,
// and batches grow with the load by themselves.
//
// Up to maxInFlight batches are on their way at once, so that one slow
// round trip does not hold up every call behind it. A batch is sent by a
// caller, the leader, on its own goroutine (no goroutine is started per
// batch: a new goroutine's stack grows by copying to go-redis's depth,
// which cost a lone call some 50 µs of CPU when measured). A caller that
// finds a slot free leads at once; otherwise it queues, and the leader of a
// finished batch hands its slot to the first queued call, which then sends
// the queue as the next batch. A leader thus only ever waits for the batch
// that holds its own call, like a caller of script.Run waits for its reply.
//
// Semantics are those of one script.Run per call: every call gets its own
// reply or error (a script's error reply, such as OOM, belongs to that call
// alone; a connection failure fails the calls of its batch), EVALSHA falls
// back to EVAL when Redis does not know the script (NOSCRIPT, after a
// restart or SCRIPT FLUSH), and go-redis retries the pipeline on
// connection errors as it retries a single command. Scripts of one batch
// run one after the other in arrival order, each atomic as before; calls of
// different batches are concurrent, as separate calls were.
type batcher struct {
	client      redis.UniversalClient
	maxInFlight int // batches on their way at once
	maxSize     int // calls per batch

	mu       sync.Mutex
	queue    []*scriptCall
	inFlight int // slots taken: batches being sent, or handed to a caller to send
	closed   bool
	idle     *sync.Cond // on mu: inFlight fell to 0
}

// Defaults of a batcher.
const (
	// batchesInFlight: measured with BenchmarkRecordFailureParallel (50
	// reporters).
	batchesInFlight = 2
	// maxBatchSize bounds a pipeline (about 1 KB of request per report): a
	// burst larger than this goes out in several pipelines.
	maxBatchSize = 128
)

// scriptCall is one caller's script run.
type scriptCall struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd    // the reply, set before done is closed
	done   chan struct{} // closed when cmd is set (nil for a call that leads at once)
	lead   chan struct{} // receives when the call is to send batch
	// replied is set with done closed (by the sender only).
	replied bool

	// Under batcher.mu:
	batch []*scriptCall // the batch this call is to send (lead has been sent to)
	gone  bool          // the caller stopped waiting
}

func newBatcher(client redis.UniversalClient) *batcher {
	b := &batcher{client: client, maxInFlight: batchesInFlight, maxSize: maxBatchSize}
	b.idle = sync.NewCond(&b.mu)
	return b
}

// run runs script with keys and args, in a batch with concurrent calls,
// and returns its reply. When ctx ends first, run returns ctx's error: a
// call still queued leaves the queue unsent, one whose batch is on its way
// may still run. Only a leader that is sending its batch waits for the
// reply, bounded by go-redis's timeouts, as a caller of script.Run does.
// After close, run fails with redis.ErrClosed.
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args []any) ([]any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &scriptCall{ctx: ctx, script: script, keys: keys, args: args}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, redis.ErrClosed
	}
	if b.inFlight < b.maxInFlight {
		// A free slot: the queue is empty (calls queue only while every
		// slot is taken), so this call is a batch of its own.
		b.inFlight++
		b.mu.Unlock()
		b.send([]*scriptCall{c})
		return c.cmd.Slice()
	}
	c.done, c.lead = make(chan struct{}), make(chan struct{}, 1)
	b.queue = append(b.queue, c)
	b.mu.Unlock()

	select {
	case <-c.done:
	case <-c.lead:
		b.mu.Lock()
		batch := c.batch
		c.batch = nil
		b.mu.Unlock()
		b.send(batch)
	case <-ctx.Done():
		b.abandon(c)
		select {
		case <-c.done: // the reply came in time after all
		default:
			return nil, ctx.Err()
		}
	}
	return c.cmd.Slice()
}

// send sends a batch, answers its calls and passes the slot on. A panic
// while sending (a bug; the server recovers the leader's call) must not
// leave the batch's other callers waiting and the slot taken: they get an
// error, and the panic goes on.
func (b *batcher) send(batch []*scriptCall) {
	var failed error
	defer func() {
		p := recover()
		if p != nil {
			err := fmt.Errorf("redisstore: panic while sending a batch of scripts: %v", p)
			for _, c := range batch {
				if !c.replied {
					c.cmd = redis.NewCmd(context.Background())
					c.cmd.SetErr(err)
					c.answered()
				}
			}
		}
		b.mu.Lock()
		if failed != nil {
			b.failQueue(failed)
		}
		b.passSlot()
		b.mu.Unlock()
		if p != nil {
			panic(p)
		}
	}()
	b.exec(batch)
	failed = connectionFailure(batch)
}

// connectionFailure returns the error of a batch that failed to reach
// Redis (after go-redis's retries), nil when Redis answered it (replies
// that are errors, such as OOM, included).
func connectionFailure(batch []*scriptCall) error {
	for _, c := range batch {
		err := c.cmd.Err()
		if err == nil || errors.Is(err, redis.Nil) {
			continue
		}
		if _, ok := replyError(err); !ok {
			return err
		}
	}
	return nil
}

// failQueue, under mu, answers every queued call with err, the connection
// failure of the batch just sent: while Redis cannot be reached, a call
// that waited for a slot would otherwise wait a second time, for its own
// batch's retries and redials, and answer after its caller gave up. The
// calls queued while that batch failed fail with it (their outcome is
// known: not sent); later calls try again.
func (b *batcher) failQueue(err error) {
	for _, c := range b.queue {
		c.cmd = redis.NewCmd(context.Background())
		c.cmd.SetErr(err)
		c.answered()
	}
	b.queue = nil
}

// passSlot, under mu, gives the slot of a leader whose batch is answered
// to the next batch from the queue, or frees it.
func (b *batcher) passSlot() {
	if len(b.queue) == 0 {
		b.queue = nil // drop the backing array
		b.inFlight--
		if b.inFlight == 0 {
			b.idle.Broadcast()
		}
		return
	}
	n := min(len(b.queue), b.maxSize)
	batch := b.queue[:n:n]
	b.queue = b.queue[n:]
	b.assign(batch)
}

// assign, under mu, makes the first caller of batch still waiting its
// leader, or frees the slot when none is (their calls are not sent).
func (b *batcher) assign(batch []*scriptCall) {
	for _, c := range batch {
		if !c.gone {
			c.batch = batch
			c.lead <- struct{}{}
			return
		}
	}
	b.passSlot()
}

// abandon records that c's caller stopped waiting. A queued call leaves
// the queue. A call told to lead a batch that it has not taken passes the
// batch, without itself, to the next caller of it. A call in a batch that
// another caller sends stays in it.
func (b *batcher) abandon(c *scriptCall) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c.gone = true
	if batch := c.batch; batch != nil {
		c.batch = nil
		rest := make([]*scriptCall, 0, len(batch)-1)
		for _, q := range batch {
			if q != c {
				rest = append(rest, q)
			}
		}
		b.assign(rest)
		return
	}
	for i, q := range b.queue {
		if q == c {
			b.queue = append(b.queue[:i:i], b.queue[i+1:]...)
			return
		}
	}
}

// exec runs a batch and answers its calls. A caller that gives up must not
// fail the others' scripts, so the calls' cancellations do not end it; it
// ends at the latest of their deadlines (when all have one), by which
// every caller has given up, and otherwise at go-redis's read and write
// timeouts. A leader, who waits for its batch, thus answers by its own
// deadline when it sends alone (and in an outage, whose calls fail the
// queue, mostly does). The context carries the first call's values (for
// tracing hooks).
func (b *batcher) exec(batch []*scriptCall) {
	if len(batch) == 1 {
		// A lone call: no pipeline to build, and no one else's script to
		// protect from its context (nor a deadline timer to make per call).
		c := batch[0]
		c.cmd = c.script.Run(c.ctx, b.client, c.keys, c.args...)
		c.answered()
		return
	}
	ctx, cancel := batchContext(batch)
	defer cancel()
	pipe := b.client.Pipeline()
	for _, c := range batch {
		c.cmd = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	// Exec's error is also every failed command's own: each call reads its
	// own.
	_, _ = pipe.Exec(ctx)
	var unknown []*scriptCall
	for _, c := range batch {
		if redis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT") {
			unknown = append(unknown, c)
			continue
		}
		c.answered()
	}
	if len(unknown) == 0 {
		return
	}
	// Redis lost its script cache (restart, failover, SCRIPT FLUSH): send
	// the source, as script.Run does. EVAL caches the script again, so the
	// next batch's EVALSHA finds it.
	pipe = b.client.Pipeline()
	for _, c := range unknown {
		c.cmd = c.script.Eval(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx)
	for _, c := range unknown {
		c.answered()
	}
}

// batchContext is the context of a batch: none of its calls' cancellation,
// the latest of their deadlines when every call has one.
func batchContext(batch []*scriptCall) (context.Context, context.CancelFunc) {
	ctx := context.WithoutCancel(batch[0].ctx)
	var latest time.Time
	for _, c := range batch {
		d, ok := c.ctx.Deadline()
		if !ok {
			return ctx, func() {}
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(ctx, latest)
}

// answered tells a waiting caller that c.cmd is set (a leader's own call
// has no one waiting).
func (c *scriptCall) answered() {
	c.replied = true
	if c.done != nil {
		close(c.done)
	}
}

// close makes later calls fail with redis.ErrClosed and waits until the
// batches on their way and the calls already queued are answered, so that
// the client can be closed after it.
func (b *batcher) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for b.inFlight > 0 {
		b.idle.Wait()
	}
}
