package redisstore

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// Subscribe streams the events every store sharing this Redis and prefix
// publishes (the scripts PUBLISH on {<prefix>}:events), until ctx ends or
// the store is closed; then the channel is closed. It returns once Redis has
// confirmed the subscription, so no event published after it returns is
// missed while the connection holds. go-redis resubscribes after a
// reconnect; events published while disconnected are lost, as are events a
// slow reader leaves no room for (they are hints, see store.Store).
func (s *Store) Subscribe(ctx context.Context) (<-chan store.Event, error) {
	// Registering with s.subs under s.mu means Close either sees this
	// subscription and waits for it, or happened before and refuses it.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, s.wrap("subscribe", redis.ErrClosed)
	}
	s.subs.Add(1)
	s.mu.Unlock()
	ps := s.client.Subscribe(ctx, s.k.events())
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		s.subs.Done()
		return nil, s.wrap("subscribe", err)
	}
	msgs := ps.Channel()
	out := make(chan store.Event, s.opts.EventBuffer)
	go func() {
		defer s.subs.Done()
		defer close(out)
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			case m, ok := <-msgs:
				if !ok {
					return
				}
				events, err := decodeEvents(m.Payload)
				if err != nil {
					continue // not ours to understand (a newer retryd?); events are hints
				}
				for _, ev := range events {
					select {
					case out <- ev:
					default: // the reader is behind: drop the hint
					}
				}
			}
		}
	}()
	return out, nil
}
