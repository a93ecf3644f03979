// Package redislog routes go-redis's own log lines (dial failures, pool
// hook errors) into retryd's structured log, at most one line per message
// kind per interval.
//
// go-redis logs through a process-wide printf-style logger, to stderr by
// default: outside the JSON log and, while Redis is down, about eight lines
// a second per replica (every pool dial retry), which buries the lines
// that say what is wrong. The health check and the store's errors already
// report the outage; these lines are detail, so one per interval is kept,
// with the count of the ones left out since.
package redislog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// DefaultInterval is how often one kind of message is logged at most.
const DefaultInterval = 10 * time.Second

// maxKinds bounds the message kinds remembered; go-redis has a few dozen
// format strings, so more means something unexpected and the table starts
// over rather than grow.
const maxKinds = 256

// Logger implements go-redis's logging interface (Printf) on a slog.Logger.
// Install it with redis.SetLogger(redislog.New(...)).
type Logger struct {
	log      *slog.Logger
	clock    clockwork.Clock
	interval time.Duration

	mu    sync.Mutex
	kinds map[string]*kind // by format string
}

type kind struct {
	last       time.Time
	suppressed int
}

// New returns a Logger writing to log at warning level, each format string
// at most once per interval (DefaultInterval when not positive). clock is
// for tests; nil means the real clock.
func New(log *slog.Logger, interval time.Duration, clock clockwork.Clock) *Logger {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &Logger{log: log, clock: clock, interval: interval, kinds: map[string]*kind{}}
}

// Printf logs one go-redis message, unless a message of the same format
// was logged less than the interval ago; the next one logged says how many
// were left out.
func (l *Logger) Printf(ctx context.Context, format string, v ...any) {
	now := l.clock.Now()
	l.mu.Lock()
	k := l.kinds[format]
	if k == nil {
		if len(l.kinds) >= maxKinds {
			clear(l.kinds)
		}
		k = &kind{}
		l.kinds[format] = k
	} else if now.Sub(k.last) < l.interval {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()

	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	attrs := []any{slog.String("component", "go-redis")}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed), slog.Duration("suppressed_over", l.interval))
	}
	l.log.WarnContext(ctx, "redis client: "+msg, attrs...)
}
