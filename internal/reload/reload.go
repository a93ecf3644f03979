// Package reload keeps a value built from small files (token lists, a TLS
// key pair) current while they are rotated, without a restart and without a
// watcher goroutine.
package reload

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
)

// DefaultInterval is how often the files are checked for changes. A rotated
// token or certificate is in force at most this long after its file
// changed.
const DefaultInterval = 5 * time.Second

// Options tune a Value; the zero value is the real clock, DefaultInterval
// and slog.Default().
type Options struct {
	Clock    clockwork.Clock
	Interval time.Duration
	Logger   *slog.Logger
}

// Value holds a value built from the contents of some files and rebuilds
// it when they change. The check is lazy: the first Get after the interval
// re-reads the files and compares their digests with the last ones seen,
// so that nothing runs while no one calls.
//
// A change that does not parse (a half-written file, a certificate whose
// new key is not there yet) keeps the previous value in force and is
// logged once; the next change is tried again. Replace files atomically
// (write a new file, rename it over the old one), as Kubernetes does for
// mounted Secrets.
type Value[T any] struct {
	what  string
	paths []string
	build func(contents [][]byte) (T, error)
	clock clockwork.Clock
	every time.Duration
	log   *slog.Logger

	cur       atomic.Pointer[T]
	nextCheck atomic.Int64 // Unix nanoseconds

	mu   sync.Mutex // held by the one caller that checks
	seen [][sha256.Size]byte
}

// New reads the files and builds the first value; an error here should stop
// the start-up. what names the files in log lines ("TLS certificate and
// key").
func New[T any](what string, paths []string, build func(contents [][]byte) (T, error), o Options) (*Value[T], error) {
	if o.Clock == nil {
		o.Clock = clockwork.NewRealClock()
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &Value[T]{what: what, paths: paths, build: build, clock: o.Clock, every: o.Interval, log: o.Logger}
	contents, err := r.read()
	if err != nil {
		return nil, err
	}
	v, err := build(contents)
	if err != nil {
		return nil, err
	}
	r.cur.Store(&v)
	r.seen = digests(contents)
	r.nextCheck.Store(r.clock.Now().Add(r.every).UnixNano())
	return r, nil
}

// Get returns the current value, first checking the files when the
// interval has passed and no other caller is checking already.
func (r *Value[T]) Get() T {
	if r.clock.Now().UnixNano() >= r.nextCheck.Load() && r.mu.TryLock() {
		r.check()
		r.mu.Unlock()
	}
	return *r.cur.Load()
}

func (r *Value[T]) check() {
	r.nextCheck.Store(r.clock.Now().Add(r.every).UnixNano())
	contents, err := r.read()
	if err != nil {
		// A missing file mid-rotation: keep what works, say so once.
		if r.seen != nil {
			r.log.Error("cannot re-read "+r.what+"; the previous ones stay in force", "err", err)
			r.seen = nil
		}
		return
	}
	d := digests(contents)
	if slices.Equal(d, r.seen) {
		return
	}
	r.seen = d
	v, err := r.build(contents)
	if err != nil {
		r.log.Error("changed "+r.what+" rejected; the previous ones stay in force", "err", err)
		return
	}
	r.cur.Store(&v)
	r.log.Info("reloaded " + r.what)
}

func (r *Value[T]) read() ([][]byte, error) {
	out := make([][]byte, len(r.paths))
	for i, p := range r.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func digests(contents [][]byte) [][sha256.Size]byte {
	d := make([][sha256.Size]byte, len(contents))
	for i, c := range contents {
		d[i] = sha256.Sum256(c)
	}
	return d
}
