package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/retryd/retryd/store"
)

// LeaseExpiredType is the error type recorded for an attempt whose worker
// never reported before its lease expired. The policy treats it as retryable.
const LeaseExpiredType = "LeaseExpired"

// ReaperConfig configures a Reaper.
type ReaperConfig struct {
	// Store holds the leases. Required.
	Store store.Store
	// Policy decides what happens to an expired attempt. Required.
	Policy *Policy
	// Clock drives wake-ups. Defaults to the real clock.
	Clock clockwork.Clock
	// Logger. Defaults to slog.Default().
	Logger *slog.Logger
	// MaxSleep bounds the wait between looks at the store, so that leases
	// taken by other replicas are noticed. Defaults to 1 second.
	MaxSleep time.Duration
	// Batch is how many expired leases one store read returns. Defaults to 100.
	Batch int
	// OnExpired, when set, is called for every lease recorded as expired.
	OnExpired func(l store.Lease, v store.Verdict)
}

// Reaper turns expired leases into failed attempts (LeaseExpired), which go
// through the policy like any other failure: nothing handed to a worker
// that died is silently dropped. Several replicas may reap at once; the
// store lets exactly one record each lease.
type Reaper struct {
	cfg ReaperConfig

	lifecycle sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewReaper checks the configuration and fills its defaults.
func NewReaper(cfg ReaperConfig) (*Reaper, error) {
	if cfg.Store == nil || cfg.Policy == nil {
		return nil, errors.New("scheduler: ReaperConfig.Store and .Policy are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxSleep <= 0 {
		cfg.MaxSleep = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	return &Reaper{cfg: cfg}, nil
}

// Start spawns the loop and returns.
func (r *Reaper) Start(ctx context.Context) {
	r.lifecycle.Lock()
	defer r.lifecycle.Unlock()
	if r.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.done = make(chan struct{})
	go r.loop(ctx)
}

// Stop ends the loop and waits for it. Idempotent; safe before Start.
func (r *Reaper) Stop() {
	r.lifecycle.Lock()
	cancel, done := r.cancel, r.done
	r.lifecycle.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (r *Reaper) loop(ctx context.Context) {
	defer close(r.done)
	for {
		wait := r.cfg.MaxSleep
		n, err := r.ReapOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.cfg.Logger.Warn("reaper: expiring leases failed", "err", err)
		case n == r.cfg.Batch:
			continue // more may be waiting
		default:
			next, ok, err := r.cfg.Store.NextLeaseExpiry(ctx)
			if err == nil && ok {
				wait = min(max(r.cfg.Clock.Until(next), 0), r.cfg.MaxSleep)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.cfg.Clock.After(wait):
		}
	}
}

// ReapOnce records every lease expired now (up to one batch) as a failed
// attempt and returns how many it looked at.
func (r *Reaper) ReapOnce(ctx context.Context) (int, error) {
	now := r.cfg.Clock.Now()
	leases, err := r.cfg.Store.ExpiredLeases(ctx, now, r.cfg.Batch)
	if err != nil {
		return 0, err
	}
	for _, l := range leases {
		v := r.cfg.Policy.Decide(Report{Phase: l.Phase, RetryCount: l.RetryCount, ErrorType: LeaseExpiredType}, now)
		_, err := r.cfg.Store.RecordFailure(ctx, store.Failure{
			JobID:        l.JobID,
			Phase:        l.Phase,
			RetryCount:   l.RetryCount,
			LeaseID:      l.LeaseID,
			LeaseExpired: true,
			ErrorType:    LeaseExpiredType,
			ErrorMessage: fmt.Sprintf("lease %s held by worker %q expired at %s without a report", l.LeaseID, l.WorkerID, l.ExpiresAt.UTC().Format(time.RFC3339Nano)),
			Now:          now,
			Verdict:      v,
		})
		switch {
		case err == nil:
			if r.cfg.OnExpired != nil {
				r.cfg.OnExpired(l, v)
			}
		case errors.Is(err, store.ErrLeaseNotHeld), errors.Is(err, store.ErrLeaseActive),
			errors.Is(err, store.ErrJobTerminal), errors.Is(err, store.ErrNotFound):
			// The worker reported, extended, or another replica reaped first.
		default:
			return len(leases), err
		}
	}
	return len(leases), nil
}
