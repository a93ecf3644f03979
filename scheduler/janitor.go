package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/retryd/retryd/store"
)

// JanitorConfig configures a Janitor.
type JanitorConfig struct {
	// Store to trim. Required.
	Store store.Store
	// Clock. Defaults to the real clock.
	Clock clockwork.Clock
	// Logger. Defaults to slog.Default().
	Logger *slog.Logger
	// Interval between retention passes. Defaults to 10 minutes.
	Interval time.Duration
	// OnExpired, when set, receives how many jobs a pass removed (metrics).
	OnExpired func(n int)
}

// Janitor applies the store's retention periodically, so that terminal jobs,
// their histories and old stats do not grow without bound.
type Janitor struct {
	cfg       JanitorConfig
	lifecycle sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewJanitor checks the configuration and fills its defaults.
func NewJanitor(cfg JanitorConfig) (*Janitor, error) {
	if cfg.Store == nil {
		return nil, errors.New("scheduler: JanitorConfig.Store is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	return &Janitor{cfg: cfg}, nil
}

// Start spawns the loop (a first pass runs at once) and returns.
func (j *Janitor) Start(ctx context.Context) {
	j.lifecycle.Lock()
	defer j.lifecycle.Unlock()
	if j.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	j.cancel = cancel
	j.done = make(chan struct{})
	go func() {
		defer close(j.done)
		for {
			n, err := j.cfg.Store.Expire(ctx, j.cfg.Clock.Now())
			if err != nil && ctx.Err() == nil {
				j.cfg.Logger.Warn("janitor: retention pass failed", "err", err)
			}
			if n > 0 {
				j.cfg.Logger.Info("janitor: removed expired jobs", "count", n)
				if j.cfg.OnExpired != nil {
					j.cfg.OnExpired(n)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-j.cfg.Clock.After(j.cfg.Interval):
			}
		}
	}()
}

// Stop ends the loop and waits for it. Idempotent; safe before Start.
func (j *Janitor) Stop() {
	j.lifecycle.Lock()
	cancel, done := j.cancel, j.done
	j.lifecycle.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}
