// Package storetest is the conformance suite of store.Store: the executable
// form of the contract written in store/store.go (the interface's doc
// comments and the state machine of the package doc). Every backend runs it
// from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, opts storetest.Options) store.Store {
//			s, err := boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{
//				JobRetention:    opts.JobRetention,
//				StatsRetention:  opts.StatsRetention,
//				MaxTerminalJobs: opts.MaxTerminalJobs,
//			})
//			require.NoError(t, err)
//			return s
//		})
//	}
//
// Each subtest gets a fresh, empty store from the factory and runs in
// parallel with the others. Times are fixed (see Base): the suite never reads
// the clock and never sleeps; it only waits, with a generous bound, for
// events that a store must deliver.
//
// Where store.go leaves a detail open, the suite pins down the reading a
// production retry service needs; each such place carries a comment starting
// with "Reading:" so that a backend author can find them all.
//
// When store behaviour changes, this suite is what grows.
package storetest

import (
	"testing"
	"time"

	"github.com/retryd/retryd/store"
)

// Options are the settings the suite asks a factory to build a store with.
// A factory must pass them on to the backend; a zero field means "the
// backend's default", which the suite expects to be the default documented in
// package store (store.DefaultJobRetention, store.DefaultStatsRetention,
// store.DefaultMaxTerminalJobs).
type Options struct {
	// JobRetention is how long terminal jobs are kept after their last
	// update before Expire removes them.
	JobRetention time.Duration
	// StatsRetention is how long hourly stats counters are kept.
	StatsRetention time.Duration
	// MaxTerminalJobs is how many terminal jobs Expire keeps at most
	// (store.NoCountBound: no count bound).
	MaxTerminalJobs int
}

// Factory returns a fresh, empty store built with opts. The suite closes the
// store when the subtest ends (and checks that Close succeeds), so the
// factory must not close it; it may register its own t.Cleanup for anything
// else it started (a temporary directory, a key prefix to drop).
type Factory func(t *testing.T, opts Options) store.Store

// Base is the fixed "now" the suite's scenarios start from. It is on an hour
// boundary so that stats buckets are easy to reason about.
var Base = time.Date(2026, time.March, 2, 9, 0, 0, 0, time.UTC)

// Run runs the whole conformance suite against the stores newStore builds.
func Run(t *testing.T, newStore Factory) {
	t.Helper()
	suites := []struct {
		name string
		run  func(*testing.T, Factory)
	}{
		{"RecordFailure", testRecordFailure},
		{"RecordSuccess", testRecordSuccess},
		{"CheckOrder", testCheckOrder},
		{"Idempotency", testIdempotency},
		{"Leases", testLeases},
		{"Claim", testClaim},
		{"ExtendLease", testExtendLease},
		{"ReturnLease", testReturnLease},
		{"Reaper", testReaper},
		{"NextDue", testNextDue},
		{"Events", testEvents},
		{"RetryJob", testRetryJob},
		{"CancelJob", testCancelJob},
		{"GetJob", testGetJob},
		{"ListJobs", testListJobs},
		{"Stats", testStats},
		{"Expire", testExpire},
		{"Data", testData},
		{"Lifecycle", testLifecycle},
		{"Backlog", testBacklog},
	}
	for _, s := range suites {
		t.Run(s.name, func(t *testing.T) { s.run(t, newStore) })
	}
}
