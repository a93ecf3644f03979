package redisstore

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// batcher sends the scripts of concurrent calls to Redis together: while a
// batch is on its way, the calls that arrive queue up, and the next batch
// takes all of them as one pipeline (one write and, mostly, one read on
// each side instead of one per call; one pool Get and its health check).
// It is the Redis counterpart of boltstore's group commit
// (store/boltstore/commit.go), timer-free like it: a call that finds a
// sender free goes out at once, so a lone call pays nothing for batching,
// and batches grow with the load by themselves.
//
// Up to maxInFlight batches are on their way at once, each sent by its own
// goroutine, so that one slow round trip does not hold up every call behind
// it. A sender goroutine lives while there is work: after its batch it
// takes the next one, and ends when the queue is empty (nothing is left
// running between bursts, and a Store that is never closed leaks nothing).
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
	inFlight int // sender goroutines running
	closed   bool
	senders  sync.WaitGroup
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

// scriptCall is one caller's script run. cmd is set, and done closed, by
// the sender.
type scriptCall struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
	done   chan struct{}
}

func newBatcher(client redis.UniversalClient) *batcher {
	return &batcher{client: client, maxInFlight: batchesInFlight, maxSize: maxBatchSize}
}

// run runs script with keys and args, in a batch with concurrent calls,
// and returns its reply. When ctx ends first, run returns ctx's error
// without waiting for the reply: the script may still run (or have run), as
// with any call whose reply is lost. After close it fails with
// redis.ErrClosed.
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args []any) ([]any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &scriptCall{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, redis.ErrClosed
	}
	b.queue = append(b.queue, c)
	if b.inFlight < b.maxInFlight {
		b.inFlight++
		b.senders.Add(1)
		go b.send()
	}
	b.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		select {
		case <-c.done: // the reply is here after all
		default:
			return nil, ctx.Err()
		}
	}
	return c.cmd.Slice()
}

// send sends batches from the queue until it is empty. There is always a
// sender while the queue is not empty: a call queues only while
// maxInFlight senders run, and a sender ends only when, under mu, it finds
// the queue empty.
func (b *batcher) send() {
	defer b.senders.Done()
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.inFlight--
			b.queue = nil // drop the backing array
			b.mu.Unlock()
			return
		}
		n := min(len(b.queue), b.maxSize)
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		b.exec(batch)
	}
}

// exec runs a batch and answers its calls. The calls' contexts do not
// bound it (a caller that gives up must not fail the others' scripts);
// go-redis's read and write timeouts do. The context carries the first
// call's values (for tracing hooks).
func (b *batcher) exec(batch []*scriptCall) {
	ctx := context.WithoutCancel(batch[0].ctx)
	if len(batch) == 1 {
		// A lone call: no pipeline to build.
		c := batch[0]
		c.cmd = c.script.Run(ctx, b.client, c.keys, c.args...)
		close(c.done)
		return
	}
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
		close(c.done)
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
		close(c.done)
	}
}

// close makes later calls fail with redis.ErrClosed and waits until the
// calls already queued are answered (their senders end), so that the
// client can be closed after it.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.senders.Wait()
}
