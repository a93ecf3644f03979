package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// subscribe subscribes for the rest of the test.
func (h *harness) subscribe() <-chan store.Event {
	h.t.Helper()
	ch, err := h.s.Subscribe(h.ctx)
	require.NoError(h.t, err, "Subscribe")
	return ch
}

// scheduledEvent and releasedEvent are the events the contract defines.
func scheduledEvent(phase string, due time.Time) store.Event {
	return store.Event{Kind: store.EventScheduled, Phase: phase, DueAt: due}
}

func releasedEvent(leaseID string) store.Event {
	return store.Event{Kind: store.EventLeaseReleased, LeaseID: leaseID}
}

// sameEvent compares the fields the contract defines for the event's kind:
// Phase and DueAt for EventScheduled, LeaseID for EventLeaseReleased.
func sameEvent(want, got store.Event) bool {
	if want.Kind != got.Kind {
		return false
	}
	switch want.Kind {
	case store.EventScheduled:
		return want.Phase == got.Phase && want.DueAt.Equal(got.DueAt)
	case store.EventLeaseReleased:
		return want.LeaseID == got.LeaseID
	}
	return false
}

// awaitEvents waits until every wanted event has arrived, in any order.
// Events are hints, so other events in between are allowed; a missing one
// fails the test after eventWait.
func awaitEvents(t *testing.T, ch <-chan store.Event, want ...store.Event) {
	t.Helper()
	pending := append([]store.Event(nil), want...)
	var seen []store.Event
	timeout := time.NewTimer(eventWait)
	defer timeout.Stop()
	for len(pending) > 0 {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "the event channel closed while waiting for %+v (seen %+v)", pending, seen)
			seen = append(seen, ev)
			for i, w := range pending {
				if sameEvent(w, ev) {
					pending = append(pending[:i], pending[i+1:]...)
					break
				}
			}
		case <-timeout.C:
			t.Fatalf("events %+v did not arrive within %v (seen %+v)", pending, eventWait, seen)
		}
	}
}

func testEvents(t *testing.T, newStore Factory) {
	t.Run("ScheduledOnRetryVerdict", func(t *testing.T) {
		h := setup(t, newStore)
		ch := h.subscribe()
		f := h.schedule("job-1", extraction, 90*time.Second)
		awaitEvents(t, ch, scheduledEvent(extraction, f.Verdict.DueAt))
	})

	t.Run("ReleasedOnSuccess", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		ch := h.subscribe()
		task := h.claimOne(at(time.Minute), extraction)
		h.succeed(leasedSuccess(task, at(2*time.Minute)))
		awaitEvents(t, ch, releasedEvent(task.LeaseID))
	})

	t.Run("ReleasedAndScheduledOnLeasedFailure", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		ch := h.subscribe()
		task := h.claimOne(at(time.Minute), extraction)
		f := leasedFailure(task, at(2*time.Minute))
		h.fail(f)
		awaitEvents(t, ch, releasedEvent(task.LeaseID), scheduledEvent(extraction, f.Verdict.DueAt))
	})

	t.Run("ReleasedAndScheduledOnReaper", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		ch := h.subscribe()
		task := h.claimOne(at(time.Minute), extraction)
		r := leasedFailure(task, task.LeaseExpiresAt)
		r.LeaseExpired = true
		h.fail(r)
		awaitEvents(t, ch, releasedEvent(task.LeaseID), scheduledEvent(extraction, r.Verdict.DueAt))
	})

	// Reading: a returned attempt is scheduled again, so it is announced as
	// scheduled as well as released: a dispatcher (of this or, for shared
	// backends, another process) must pick it up without waiting.
	t.Run("ReleasedAndScheduledOnReturn", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		ch := h.subscribe()
		task := h.claimOne(at(2*time.Minute), extraction)
		require.NoError(t, h.s.ReturnLease(h.ctx, "job-1", task.LeaseID))
		awaitEvents(t, ch, releasedEvent(task.LeaseID), scheduledEvent(extraction, at(time.Minute)))
	})

	t.Run("ReleasedOnCancel", func(t *testing.T) {
		h := setup(t, newStore)
		h.schedule("job-1", extraction, time.Minute)
		ch := h.subscribe()
		task := h.claimOne(at(time.Minute), extraction)
		_, err := h.s.CancelJob(h.ctx, "job-1", "operator", at(2*time.Minute))
		require.NoError(t, err)
		awaitEvents(t, ch, releasedEvent(task.LeaseID))
	})

	t.Run("ScheduledOnRetryJob", func(t *testing.T) {
		h := setup(t, newStore)
		f := failure("job-1", extraction, 0, at(0))
		f.Verdict = giveUp("ValidationError is not retryable.")
		h.fail(f)
		ch := h.subscribe()
		_, err := h.s.RetryJob(h.ctx, "job-1", "", at(time.Hour))
		require.NoError(t, err)
		awaitEvents(t, ch, scheduledEvent(extraction, at(time.Hour)))
	})

	t.Run("EverySubscriberReceives", func(t *testing.T) {
		h := setup(t, newStore)
		a, b := h.subscribe(), h.subscribe()
		f := h.schedule("job-1", chunking, time.Minute)
		awaitEvents(t, a, scheduledEvent(chunking, f.Verdict.DueAt))
		awaitEvents(t, b, scheduledEvent(chunking, f.Verdict.DueAt))
	})

	t.Run("ClosesWhenContextEnds", func(t *testing.T) {
		h := setup(t, newStore)
		ctx, cancel := context.WithCancel(h.ctx)
		ch, err := h.s.Subscribe(ctx)
		require.NoError(t, err)
		other := h.subscribe()
		cancel()
		timeout := time.NewTimer(eventWait)
		defer timeout.Stop()
		for open := true; open; {
			select {
			case _, open = <-ch:
			case <-timeout.C:
				t.Fatalf("the event channel was not closed within %v of its context's end", eventWait)
			}
		}
		// The other subscription is unaffected.
		f := h.schedule("job-1", extraction, time.Minute)
		awaitEvents(t, other, scheduledEvent(extraction, f.Verdict.DueAt))
	})
}
