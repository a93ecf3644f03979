package boltstore

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// testdata/schema1.db.gz and schema2.db.gz are data files written by the
// schema 1 store (commit 6877b07) and the schema 2 store (39567fb) with
// seed and seedHistory: jobs scheduled, leased, failed, completed, handed
// off, and one with two cycles.
var oldSchemas = []byte{1, 2}

// oldFile writes the file of schema v into a fresh directory.
func oldFile(t *testing.T, v byte) string {
	t.Helper()
	gz, err := os.ReadFile(filepath.Join("testdata", fmt.Sprintf("schema%d.db.gz", v)))
	require.NoError(t, err)
	r, err := gzip.NewReader(bytes.NewReader(gz))
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "retryd.db")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}

// wantOldState is what the old files hold, read from a new store given the
// same calls. Lease ids are random, so they are left out.
func wantOldState(t *testing.T) ([]string, state) {
	t.Helper()
	s := open(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ids := append(seed(t, s), seedHistory(t, s))
	return ids, readState(t, s, ids)
}

var ignoreLeaseIDs = cmp.Options{
	cmpopts.EquateEmpty(),
	cmpopts.IgnoreFields(store.Job{}, "LeaseID"),
	cmpopts.IgnoreFields(store.Lease{}, "LeaseID"),
}

// layout is what a file holds: its schema version, buckets, and the number
// of keys of the listing.
type layout struct {
	Schema   byte
	Buckets  []string
	Listings int
}

func layoutOf(t *testing.T, path string) layout {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	var l layout
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		l.Schema = tx.Bucket(bucketMeta).Get(keySchema)[0]
		l.Listings = tx.Bucket(bucketListing).Stats().KeyN
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			l.Buckets = append(l.Buckets, string(name))
			return nil
		})
	}))
	slices.Sort(l.Buckets)
	return l
}

// Opening a file of an older schema migrates it in place: everything it
// showed is shown the same, the old buckets and listing entries are gone,
// and the store works on (the lease taken under the old schema is
// reported with its id).
func TestMigrate(t *testing.T) {
	t.Parallel()
	ids, want := wantOldState(t)
	for _, v := range oldSchemas {
		t.Run(fmt.Sprintf("schema-%d", v), func(t *testing.T) {
			t.Parallel()
			path := oldFile(t, v)
			require.Equal(t, v, layoutOf(t, path).Schema, "the test file's schema")

			s, err := Open(path, Options{})
			require.NoError(t, err)
			got := readState(t, s, ids)
			if d := cmp.Diff(want, got, ignoreLeaseIDs); d != "" {
				t.Fatalf("state after migration (-want +got):\n%s", d)
			}
			require.Len(t, got.Expired, 1)
			lease := got.Expired[0]
			ctx := t.Context()
			_, err = s.RecordFailure(ctx, store.Failure{
				JobID: lease.JobID, Phase: lease.Phase, RetryCount: lease.RetryCount, LeaseID: lease.LeaseID, LeaseExpired: true,
				ErrorType: "LeaseExpired", Now: base.Add(24 * time.Hour),
				Verdict: store.Verdict{Decision: store.DecisionGiveUp, Reason: "gave up."},
			})
			require.NoError(t, err, "the old file's lease is held")
			j, err := s.GetJob(ctx, lease.JobID)
			require.NoError(t, err)
			require.Equal(t, store.StateFailed, j.State)
			require.Len(t, j.Attempts, 2)
			require.NoError(t, s.Close())

			require.Equal(t, migrated(len(ids)), layoutOf(t, path))
		})
	}
}

// migrated is the layout of a file of jobs jobs after its migration: the
// current schema, no bucket of an old one left, one listing per job.
func migrated(jobs int) layout {
	return layout{
		Schema:   schemaVersion,
		Buckets:  []string{"due", "job", "leases", "listing", "meta", "stats"},
		Listings: jobs,
	}
}

// A migration cut short (a crash between its transactions) is carried on
// by the next Open.
func TestMigrateResumes(t *testing.T) {
	t.Parallel()
	ids, want := wantOldState(t)
	for _, v := range oldSchemas {
		t.Run(fmt.Sprintf("schema-%d", v), func(t *testing.T) {
			t.Parallel()
			path := oldFile(t, v)
			db, err := bolt.Open(path, 0o600, nil)
			require.NoError(t, err)
			if v == 1 {
				require.NoError(t, db.Update(func(tx *bolt.Tx) error {
					_, err := tx.CreateBucketIfNotExists(bucketJob)
					return err
				}))
				for _, m := range []struct {
					bucket []byte
					kind   byte
				}{{v1BucketJobs, kindRecord}, {v1BucketAttempts, kindAttempt}} {
					moved, err := migrateStep(db, m.bucket, m.kind, 2)
					require.NoError(t, err)
					require.Equal(t, 2, moved)
				}
			} else {
				deleted, err := dropListAny(db, 2)
				require.NoError(t, err)
				require.Equal(t, 2, deleted)
			}
			require.NoError(t, db.Close())

			s, err := Open(path, Options{})
			require.NoError(t, err)
			got := readState(t, s, ids)
			require.NoError(t, s.Close())
			if d := cmp.Diff(want, got, ignoreLeaseIDs); d != "" {
				t.Fatalf("state after a resumed migration (-want +got):\n%s", d)
			}
			require.Equal(t, migrated(len(ids)), layoutOf(t, path))
		})
	}
}

func TestV1Key(t *testing.T) {
	t.Parallel()
	require.Equal(t, jobKey("j\x00b"), must(v1Key([]byte("j\x00b"), kindRecord)))
	old := append(jobPrefix("job"), 0, 0, 0, 7, 10, 'e', 'x', 't', 'r', 'a', 'c', 't', 'i', 'o', 'n', 0, 0, 0, 3)
	require.Equal(t, attemptKey("job", 7, "extraction", 3), must(v1Key(old, kindAttempt)))
	require.Equal(t, payloadKey("job", "chunking"), must(v1Key(append(jobPrefix("job"), "chunking"...), kindPayload)))
	_, err := v1Key([]byte{200}, kindPayload)
	require.ErrorIs(t, err, errCorrupt)
	_, err = v1Key([]byte{5, 'a'}, kindAttempt)
	require.ErrorIs(t, err, errCorrupt)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// seedHistory gives one job a longer history: two cycles, a give-up, a
// manual retry, a leased success that hands off to a second phase with a
// payload of its own.
func seedHistory(t *testing.T, s *Store) string {
	t.Helper()
	ctx := t.Context()
	const id = "history"
	at := base.Add(10 * time.Second)
	_, err := s.RecordFailure(ctx, store.Failure{
		JobID: id, Phase: "extraction", ErrorType: "Timeout", ErrorMessage: "first", Payload: []byte("p1"),
		Labels: map[string]string{"k": "v"}, Now: at,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "retry.", NextRetryCount: 1, Delay: time.Second, DueAt: at.Add(time.Second)},
	})
	require.NoError(t, err)
	claim := func(now time.Time) store.Task {
		tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, Now: now, LeaseFor: time.Minute, WorkerID: "w2"})
		require.NoError(t, err)
		for _, task := range tasks {
			if task.JobID == id {
				return task
			}
		}
		t.Fatalf("claim at %v: %+v", now, tasks)
		return store.Task{}
	}
	task := claim(at.Add(time.Second))
	_, err = s.RecordFailure(ctx, store.Failure{
		JobID: id, Phase: "extraction", RetryCount: 1, LeaseID: task.LeaseID, ErrorType: "HTTPError", ErrorMessage: "second", HTTPStatus: 500,
		Now: at.Add(2 * time.Second), Verdict: store.Verdict{Decision: store.DecisionGiveUp, Reason: "gave up."},
	})
	require.NoError(t, err)
	_, err = s.RetryJob(ctx, id, "", at.Add(3*time.Second))
	require.NoError(t, err)
	task = claim(at.Add(3 * time.Second))
	_, err = s.RecordSuccess(ctx, store.Success{
		JobID: id, Phase: "extraction", LeaseID: task.LeaseID, NextPhase: "chunking", NextPayload: []byte("p2"),
		Output: []byte("o"), Now: at.Add(4 * time.Second),
	})
	require.NoError(t, err)
	return id
}
