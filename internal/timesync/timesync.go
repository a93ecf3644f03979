// Package timesync gives the retryd replicas that share one Redis a common
// clock: Redis's own (TIME), as measured by each replica.
//
// Due times are absolute: the replica that records a failure stores "now +
// delay" by its clock, and any replica may claim the retry once "now" by
// its own clock reaches that time. A replica whose clock ran N seconds
// ahead would dispatch every retry N seconds early (and reap leases N
// seconds early). So every replica runs its scheduler on one reference
// clock instead of its own.
//
// Clock measures the offset between the reference and the local clock
// from the best (shortest round trip) of a few TIME calls, and reads the
// time as the reference time of that measurement plus the local monotonic
// time elapsed since: a step of the local wall clock (a bad NTP sync, a
// manual change) moves nothing, and between measurements the clock can
// only drift by the local oscillator's rate error (parts per million:
// microseconds over the 5-second interval).
//
// The reference time a call returns was read somewhere within its round
// trip; the clock takes it as read at the end of the call, the latest it
// can have been. So the clock is never ahead of the reference (but for
// that drift), only behind, by at most the round trip: a retry is never
// dispatched before its due time on the reference clock, and at most the
// best round trip (a fraction of a millisecond on a LAN) after it. Taking
// the middle of the call instead would halve the error but let it go
// either way; on a loaded host, where a request waits in Redis's queue
// and its reply comes back fast, that made retries early by milliseconds.
// A measurement whose round trip exceeds MaxRTT is discarded, so each
// replica is within MaxRTT (plus the drift) behind the reference, and no
// retry is dispatched earlier than MaxRTT before the due time the
// reporting replica computed (that replica's own lag). That bound is the
// skew tolerance README.md ("Time") documents; the local clock's own skew
// is measured and cancelled, whatever its size.
package timesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Defaults. See Config.
const (
	DefaultInterval = 5 * time.Second
	DefaultSamples  = 3
	DefaultMaxRTT   = 20 * time.Millisecond
	// DefaultWarnSkew is the local clock skew above which a warning is
	// logged: harmless to scheduling, but the host's time service is broken.
	DefaultWarnSkew = time.Second
	// startRounds bounds the rounds New tries before giving up on a
	// reference that never answers within MaxRTT.
	startRounds = 20
)

// Source reads the reference time (Redis TIME).
type Source func(ctx context.Context) (time.Time, error)

// Config configures a Clock.
type Config struct {
	// Source reads the reference time. Required.
	Source Source
	// Base is the local clock: its Now is the local wall clock, its Since
	// the elapsed (monotonic) time, its timers the local timers. Defaults
	// to the real clock.
	Base clockwork.Clock
	// Interval is how often the offset is measured again. Defaults to 5 s.
	Interval time.Duration
	// Samples is how many TIME calls one measurement makes; the one with
	// the shortest round trip counts. Defaults to 3.
	Samples int
	// MaxRTT discards a measurement whose best round trip is longer: it
	// bounds how far behind the reference the clock may read (never
	// ahead). Defaults to 20 ms.
	MaxRTT time.Duration
	// WarnSkew is the local clock skew that earns a warning. Defaults to 1 s.
	WarnSkew time.Duration
	// Logger. Defaults to slog.Default().
	Logger *slog.Logger
	// OnMeasure, when set, is called with every accepted measurement.
	OnMeasure func(Measurement)
}

func (c *Config) setDefaults() error {
	if c.Source == nil {
		return errors.New("timesync: Config.Source is required")
	}
	if c.Base == nil {
		c.Base = clockwork.NewRealClock()
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Samples <= 0 {
		c.Samples = DefaultSamples
	}
	if c.MaxRTT <= 0 {
		c.MaxRTT = DefaultMaxRTT
	}
	if c.WarnSkew <= 0 {
		c.WarnSkew = DefaultWarnSkew
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Measurement is one accepted reading of the reference.
type Measurement struct {
	// Skew is the local wall clock minus the reference: positive when the
	// local clock runs ahead.
	Skew time.Duration
	// RTT is the round trip of the TIME call: the clock reads at most that
	// much behind the reference (and Skew is within half of it).
	RTT time.Duration
}

// Clock is a clockwork.Clock whose Now is the reference time. Timers,
// tickers and sleeps are the base clock's: durations are the same on both.
type Clock struct {
	cfg Config

	mu       sync.RWMutex
	refAt    time.Time // the reference time at localAt
	localAt  time.Time // the base clock's Now at the end of the measuring call
	last     Measurement
	warned   bool
	measured int

	lifecycle sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
}

var _ clockwork.Clock = (*Clock)(nil)

// New measures the reference once, trying again for a while when the
// round trips are too long, and returns a Clock set to it. It fails when
// the reference cannot be read (the error says why) or never answers within
// MaxRTT. Start keeps the measurement fresh.
func New(ctx context.Context, cfg Config) (*Clock, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Clock{cfg: cfg}
	var best time.Duration
	for range startRounds {
		m, ok, err := c.measure(ctx)
		if err != nil {
			return nil, err
		}
		if ok {
			cfg.Logger.Info("scheduling on the shared reference clock (Redis TIME)",
				"local_skew", m.Skew, "rtt", m.RTT, "max_rtt", cfg.MaxRTT)
			return c, nil
		}
		if best == 0 || m.RTT < best {
			best = m.RTT
		}
	}
	return nil, fmt.Errorf("timesync: no reading of the reference time came back within %v (best round trip %v in %d tries)",
		cfg.MaxRTT, best, startRounds*cfg.Samples)
}

// measure takes one measurement of Samples calls and applies it when its
// best round trip is within MaxRTT. It returns the best sample (applied or
// not), whether it was applied, and an error when no call succeeded.
func (c *Clock) measure(ctx context.Context) (Measurement, bool, error) {
	var (
		best      Measurement
		bestRef   time.Time
		bestLocal time.Time
		got       bool
		lastErr   error
	)
	for range c.cfg.Samples {
		cctx, cancel := context.WithTimeout(ctx, max(c.cfg.Interval, time.Second))
		t0 := c.cfg.Base.Now()
		ref, err := c.cfg.Source(cctx)
		rtt := c.cfg.Base.Since(t0)
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		if !got || rtt < best.RTT {
			got = true
			// The skew reported is the best estimate (the middle of the
			// call); the clock runs from the end of it, never ahead.
			best = Measurement{Skew: t0.Add(rtt / 2).Sub(ref), RTT: rtt}
			bestRef, bestLocal = ref, t0.Add(rtt)
		}
	}
	if !got {
		return Measurement{}, false, fmt.Errorf("timesync: read the reference time: %w", lastErr)
	}
	if best.RTT > c.cfg.MaxRTT {
		return best, false, nil
	}
	c.mu.Lock()
	c.refAt, c.localAt, c.last = bestRef, bestLocal, best
	c.measured++
	warn := abs(best.Skew) > c.cfg.WarnSkew
	changed := warn != c.warned
	c.warned = warn
	c.mu.Unlock()
	if changed && warn {
		c.cfg.Logger.Warn("the local clock differs from Redis TIME; retryd schedules on Redis time, so retries stay on time, but the host's time service needs fixing",
			"local_skew", best.Skew, "warn_above", c.cfg.WarnSkew)
	} else if changed {
		c.cfg.Logger.Info("the local clock agrees with Redis TIME again", "local_skew", best.Skew)
	}
	if c.cfg.OnMeasure != nil {
		c.cfg.OnMeasure(best)
	}
	return best, true, nil
}

// Start measures every Interval until Stop or ctx ends. A failed or
// discarded measurement keeps the previous one (the clock runs on the
// local monotonic clock meanwhile).
func (c *Clock) Start(ctx context.Context) {
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	if c.cancel != nil {
		return
	}
	ctx, c.cancel = context.WithCancel(ctx)
	c.done = make(chan struct{})
	go c.loop(ctx)
}

// Stop ends the loop and waits for it. Idempotent; safe before Start.
func (c *Clock) Stop() {
	c.lifecycle.Lock()
	cancel, done := c.cancel, c.done
	c.lifecycle.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (c *Clock) loop(ctx context.Context) {
	defer close(c.done)
	t := c.cfg.Base.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		m, ok, err := c.measure(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			c.cfg.Logger.Warn("timesync: measuring Redis TIME failed; the clock runs on from the last measurement", "err", err)
		case !ok:
			c.cfg.Logger.Debug("timesync: measurement discarded (round trip too long)", "rtt", m.RTT, "max_rtt", c.cfg.MaxRTT)
		}
	}
}

// Last returns the latest accepted measurement.
func (c *Clock) Last() Measurement {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.last
}

// Now returns the reference time: the last measurement's reference time
// plus the local time elapsed since it.
func (c *Clock) Now() time.Time {
	c.mu.RLock()
	ref, at := c.refAt, c.localAt
	c.mu.RUnlock()
	return ref.Add(c.cfg.Base.Since(at))
}

// Since returns the reference time elapsed since t.
func (c *Clock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// Until returns the reference time left until t.
func (c *Clock) Until(t time.Time) time.Duration { return t.Sub(c.Now()) }

// After, Sleep, NewTicker, NewTimer and AfterFunc are the base clock's.
func (c *Clock) After(d time.Duration) <-chan time.Time { return c.cfg.Base.After(d) }

// Sleep is the base clock's.
func (c *Clock) Sleep(d time.Duration) { c.cfg.Base.Sleep(d) }

// NewTicker is the base clock's.
func (c *Clock) NewTicker(d time.Duration) clockwork.Ticker { return c.cfg.Base.NewTicker(d) }

// NewTimer is the base clock's.
func (c *Clock) NewTimer(d time.Duration) clockwork.Timer { return c.cfg.Base.NewTimer(d) }

// AfterFunc is the base clock's.
func (c *Clock) AfterFunc(d time.Duration, f func()) clockwork.Timer {
	return c.cfg.Base.AfterFunc(d, f)
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
