// Package boltstore is the embedded store.Store: one bbolt file
// (go.etcd.io/bbolt, etcd's B+tree) in retryd's data directory, so that
// retryd runs with nothing else installed. It behaves exactly as the Redis
// store does; store/storetest holds both to that.
//
// Durability: every method that changes something returns only after its
// transaction is committed and fsynced. Concurrent changes share commits
// (group commit, see groupCommit): changes that arrive while a commit is
// running are applied together in the next transaction and paid for with
// one fsync, which is what lets one disk absorb many concurrent reports.
//
// A file is opened by one process at a time (an exclusive flock); a second
// retryd on the same file fails at once with ErrLocked.
package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/retryd/retryd/store"
)

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("file is locked")

// Options configure the store. The zero value is ready to use.
type Options struct {
	// JobRetention is how long a terminal job (failed, completed, canceled)
	// and its attempts are kept after its last update before Expire removes
	// it. Defaults to store.DefaultJobRetention.
	JobRetention time.Duration
	// StatsRetention is how long hourly stats counters are kept. Defaults
	// to store.DefaultStatsRetention.
	StatsRetention time.Duration
	// MaxTerminalJobs bounds the failed, completed and canceled jobs kept:
	// beyond it Expire removes the least recently updated ones, whatever
	// their age. store.NoCountBound turns the bound off. Defaults to
	// store.DefaultMaxTerminalJobs.
	MaxTerminalJobs int
	// LockTimeout is how long Open waits for the file lock that another
	// process holds before failing with ErrLocked. It is short on purpose:
	// a second retryd on the same data directory must fail at once, not
	// hang. Defaults to 250ms.
	LockTimeout time.Duration
	// MaxBatchSize is the most changes one commit carries. A commit takes
	// every change that queued while the previous one ran, up to this many;
	// the bound keeps one transaction (and the wait of its first caller)
	// short under a burst. Defaults to 1000.
	MaxBatchSize int
}

// Option defaults.
const (
	DefaultLockTimeout  = 250 * time.Millisecond
	DefaultMaxBatchSize = 1000
)

// withDefaults validates o and fills in the defaults.
func (o Options) withDefaults() (Options, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"JobRetention", o.JobRetention},
		{"StatsRetention", o.StatsRetention},
		{"LockTimeout", o.LockTimeout},
	} {
		if d.v < 0 {
			return o, fmt.Errorf("boltstore: Options.%s must not be negative, got %v", d.name, d.v)
		}
	}
	if o.MaxTerminalJobs < 0 && o.MaxTerminalJobs != store.NoCountBound {
		return o, fmt.Errorf("boltstore: Options.MaxTerminalJobs must not be negative (store.NoCountBound turns the bound off), got %d", o.MaxTerminalJobs)
	}
	if o.MaxTerminalJobs == 0 {
		o.MaxTerminalJobs = store.DefaultMaxTerminalJobs
	}
	if o.MaxBatchSize < 0 {
		return o, fmt.Errorf("boltstore: Options.MaxBatchSize must not be negative, got %d", o.MaxBatchSize)
	}
	if o.JobRetention == 0 {
		o.JobRetention = store.DefaultJobRetention
	}
	if o.StatsRetention == 0 {
		o.StatsRetention = store.DefaultStatsRetention
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxBatchSize == 0 {
		o.MaxBatchSize = DefaultMaxBatchSize
	}
	return o, nil
}

// Store is the embedded store.Store. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	opts Options
	hub  *hub
	// commit applies a change durably: groupCommit.run. The benchmarks
	// swap in db.Update (one fsync per change) and db.Batch to compare.
	commit func(func(*bolt.Tx) error) error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store file at path, and its directory.
func Open(path string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: create the directory of %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      opts.LockTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: open %s: %w: another retryd holds it (gave up after %v); stop that process or use another data directory",
			path, ErrLocked, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}

	var from byte // the schema of a file to migrate
	err = update(db, func(tx *bolt.Tx) error {
		from = 0
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil: // a new file
			if err := meta.Put(keySchema, []byte{schemaVersion}); err != nil {
				return err
			}
		case len(v) != 1 || v[0] == 0:
			return fmt.Errorf("%w: schema version %v", errCorrupt, v)
		case v[0] > schemaVersion:
			return fmt.Errorf("schema version %v is newer than this retryd understands (%d)", v, schemaVersion)
		case v[0] < schemaVersion:
			from = v[0]
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && from != 0 {
		err = migrate(db, from, migrateChunk)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: initialise %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: opts, hub: newHub()}
	s.commit = (&groupCommit{db: db, maxSize: opts.MaxBatchSize}).run
	return s, nil
}

// Path returns the file the store lives in.
func (s *Store) Path() string { return s.path }

// Close ends every subscription and closes the file. Changes in flight
// finish first (bbolt waits for open transactions).
func (s *Store) Close() error {
	s.hub.close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close %s: %w", s.path, err)
	}
	return nil
}

// Ping reports whether the file is open and readable.
func (s *Store) Ping(ctx context.Context) error {
	return s.view(ctx, func(*txn) error { return nil })
}

// write runs fn in a read-write transaction shared with concurrent writers
// and returns once it is committed durably.
//
// The group commit runs fn again, in a fresh transaction, when a function
// batched with it fails, so fn must start from scratch each time: reset its
// outputs first and leave side effects (events) until write returns. A
// refusal (ErrConflict, ErrLeaseNotHeld, …) is not returned from fn — that
// would roll back and re-run every change sharing the commit — but stored
// in a variable of the caller, and fn makes no change before deciding it.
func (s *Store) write(ctx context.Context, fn func(*txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.wrap(s.commit(func(tx *bolt.Tx) error { return fn(newTxn(tx)) }))
}

// view runs fn in a read-only transaction.
func (s *Store) view(ctx context.Context, fn func(*txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.wrap(s.db.View(func(tx *bolt.Tx) error { return fn(newTxn(tx)) }))
}

// wrap maps bbolt's errors: a closed database is store.ErrUnavailable.
func (s *Store) wrap(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("%w: boltstore %s is closed", store.ErrUnavailable, s.path)
	default:
		return fmt.Errorf("boltstore %s: %w", s.path, err)
	}
}
