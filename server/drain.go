package server

import (
	"context"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc"
)

// drainSettle is how long Shutdown waits, once no call is running, for a
// call still on its way (sent before the client saw the GOAWAY) before it
// closes the connections left open. Such a call that arrives later gets
// UNAVAILABLE without having run, which clients retry (reports are
// idempotent).
const drainSettle = 250 * time.Millisecond

// calls counts the RPCs in progress, so that Shutdown can tell when the
// connections still open carry nothing.
//
// grpc-go's GracefulStop waits for every connection to close, and a
// connection closes only after its client has acknowledged the GOAWAY ping
// or 5 seconds have passed. A client that does not read an idle connection
// never acknowledges it: grpc-python (C-core) polls an idle channel only on
// its 5-second backup poller, so SIGTERM took up to 5 s with one idle
// Python client connected. And a stream whose worker stopped reading keeps
// its connection open until the client reads, since the stream's trailers
// wait behind its full flow-control window. Once no call runs, nothing is
// lost by closing those connections.
type calls struct {
	mu      sync.Mutex
	active  int
	started uint64
	idle    chan struct{} // closed when active drops to zero; nil while nobody waits
}

func (c *calls) begin() {
	c.mu.Lock()
	c.active++
	c.started++
	c.mu.Unlock()
}

func (c *calls) end() {
	c.mu.Lock()
	c.active--
	if c.active == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.mu.Unlock()
}

// whenIdle returns a channel closed once no call runs, and the number of
// calls started so far.
func (c *calls) whenIdle() (<-chan struct{}, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch, c.started
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	return c.idle, c.started
}

// quiet reports whether no call runs and none started since the count n.
func (c *calls) quiet(n uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active == 0 && c.started == n
}

// quiesced returns a channel closed once no call has run for settle. The
// goroutine behind it ends with ctx.
func (c *calls) quiesced(ctx context.Context, clock clockwork.Clock, settle time.Duration) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		for {
			idle, n := c.whenIdle()
			select {
			case <-idle:
			case <-ctx.Done():
				return
			}
			select {
			case <-clock.After(settle):
			case <-ctx.Done():
				return
			}
			if c.quiet(n) {
				close(out)
				return
			}
		}
	}()
	return out
}

// unary and stream are the outermost interceptors: they count every call
// from its start to its handler's return.
func (c *calls) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c.begin()
		defer c.end()
		return handler(ctx, req)
	}
}

func (c *calls) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c.begin()
		defer c.end()
		return handler(srv, ss)
	}
}
