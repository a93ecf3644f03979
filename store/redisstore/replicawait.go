package redisstore

import (
	"context"
	"sync"
)

// replicaWaiter shares the strict-durability wait among concurrent
// changes: a group commit for replication. A change whose script has
// returned joins the next round; a round writes the sync counter and WAITs
// once for all the changes that joined it, which are all applied before
// its counter write (they joined before the round was taken), so the
// replicas' confirmation of the counter covers every one of them. While a
// round is on its way the next one fills, so under load one WAIT answers
// many reports instead of one WAIT (and a connection held for it) each.
type replicaWaiter struct {
	mu      sync.Mutex
	next    *waitRound // the round changes join; nil when none has
	running bool       // a goroutine is running rounds
}

// waitRound is one counter write and WAIT.
type waitRound struct {
	done      chan struct{} // closed when the fields below are set
	confirmed int64         // replicas that confirmed
	err       error         // the counter write or WAIT failed
}

// wait joins the next round and returns its outcome, or ctx's error when
// ctx ends first. run performs a round (the counter write and WAIT).
func (w *replicaWaiter) wait(ctx context.Context, run func() (int64, error)) (int64, error) {
	w.mu.Lock()
	r := w.next
	if r == nil {
		r = &waitRound{done: make(chan struct{})}
		w.next = r
	}
	if !w.running {
		w.running = true
		go w.runRounds(run)
	}
	w.mu.Unlock()
	select {
	case <-r.done:
		return r.confirmed, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// runRounds runs the pending round, and the ones that fill meanwhile,
// until none is pending.
func (w *replicaWaiter) runRounds(run func() (int64, error)) {
	for {
		w.mu.Lock()
		r := w.next
		w.next = nil
		if r == nil {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		r.confirmed, r.err = run()
		close(r.done)
	}
}
