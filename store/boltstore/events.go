package boltstore

import (
	"context"
	"fmt"
	"sync"

	"github.com/retryd/retryd/store"
)

// subscriberBuffer is how many events a subscriber may fall behind before
// events to it are dropped. Events are wake-up hints (the store is the
// truth), so dropping is safe; blocking a commit on a slow reader is not.
const subscriberBuffer = 256

// hub fans events out to the subscribers of this process. A bbolt file has
// one process, so in-process delivery reaches every dispatcher there is.
type hub struct {
	mu     sync.Mutex
	subs   map[chan store.Event]func() bool // channel → stop of its context.AfterFunc
	closed bool
}

func newHub() *hub { return &hub{subs: map[chan store.Event]func() bool{}} }

// Subscribe implements store.Store.
func (s *Store) Subscribe(ctx context.Context) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan store.Event, subscriberBuffer)
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("%w: boltstore %s is closed", store.ErrUnavailable, s.path)
	}
	h.subs[ch] = context.AfterFunc(ctx, func() { h.remove(ch) })
	return ch, nil
}

// remove ends one subscription.
func (h *hub) remove(ch chan store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[ch]; ok {
		delete(h.subs, ch)
		close(ch)
	}
}

// publish sends events to every subscriber without blocking. It is called
// after the change the events describe has been committed.
func (h *hub) publish(events []store.Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		for _, ev := range events {
			select {
			case ch <- ev:
			default: // the reader is behind; it re-reads the store anyway
			}
		}
	}
}

// close ends every subscription, for Store.Close.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch, stop := range h.subs {
		stop()
		close(ch)
	}
	clear(h.subs)
}
