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
	// Interval between retention runs. Defaults to 10 minutes.
	Interval time.Duration
	// OnExpired, when set, receives the result of every store pass that
	// removed something (metrics). It must not block.
	OnExpired func(r store.ExpireResult)
}

// Janitor applies the store's retention periodically, so that terminal jobs,
// their histories and old stats do not grow without bound. Nothing is
// removed silently: every run that removed something logs, at info, how
// many jobs went by age and by count and how many stats hours went.
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

// Start spawns the loop (a first run starts at once) and returns.
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
			j.RunOnce(ctx)
			select {
			case <-ctx.Done():
				return
			case <-j.cfg.Clock.After(j.cfg.Interval):
			}
		}
	}()
}

// RunOnce applies the retention now: it calls the store's Expire again
// while the store says more is left (a store bounds each call; a backlog
// larger than one call is worked off at once, not one call per interval),
// then logs the totals. It returns the totals.
func (j *Janitor) RunOnce(ctx context.Context) store.ExpireResult {
	var total store.ExpireResult
	for {
		r, err := j.cfg.Store.Expire(ctx, j.cfg.Clock.Now())
		total.ByAge += r.ByAge
		total.ByCount += r.ByCount
		total.StatsHours += r.StatsHours
		if (r.Jobs() > 0 || r.StatsHours > 0) && j.cfg.OnExpired != nil {
			j.cfg.OnExpired(r)
		}
		if err != nil {
			if ctx.Err() == nil {
				j.cfg.Logger.Warn("janitor: retention run failed", "err", err,
					"jobs_removed_by_age", total.ByAge, "jobs_removed_by_count", total.ByCount)
			}
			break
		}
		if !r.More || ctx.Err() != nil {
			break
		}
	}
	if total.Jobs() > 0 || total.StatsHours > 0 {
		j.cfg.Logger.Info("janitor: retention removed old data",
			"jobs_removed_by_age", total.ByAge, "jobs_removed_by_count", total.ByCount,
			"stats_hours_removed", total.StatsHours)
	}
	return total
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
