package boltstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func openCommitDB(t *testing.T) (*bolt.DB, *groupCommit) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "commit.db"), 0o600, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("b"))
		return err
	}))
	return db, &groupCommit{db: db, maxSize: 7}
}

func put(key string) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte(key), []byte(key)) }
}

func keys(t *testing.T, db *bolt.DB) []string {
	t.Helper()
	var out []string
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("b")).ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	}))
	return out
}

// Changes that queue while a commit runs share the next transactions, at
// most maxSize each, and every caller gets its own answer.
func TestGroupCommitBatches(t *testing.T) {
	t.Parallel()
	db, g := openCommitDB(t)
	var (
		mu  sync.Mutex
		txs = map[int]int{} // transaction id → changes in it
	)
	record := func(key string) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			mu.Lock()
			txs[tx.ID()]++
			mu.Unlock()
			return put(key)(tx)
		}
	}
	started, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- g.run(func(tx *bolt.Tx) error {
			close(started)
			<-release // hold the first commit until the others queued
			return record("first")(tx)
		})
	}()
	<-started

	const n = 199
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = g.run(record(fmt.Sprintf("k%03d", i))) })
	}
	for queued := 0; queued < n; {
		runtime.Gosched()
		g.mu.Lock()
		queued = len(g.queue)
		g.mu.Unlock()
	}
	close(release)
	wg.Wait()
	require.NoError(t, <-first)
	for i, err := range errs {
		require.NoError(t, err, "change %d", i)
	}
	require.Len(t, keys(t, db), n+1)
	require.Len(t, txs, 1+(n+6)/7, "one transaction for the first change, then batches of maxSize")
	for id, k := range txs {
		require.LessOrEqual(t, k, 7, "transaction %d carried %d changes", id, k)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	require.False(t, g.leading, "leadership is released when the queue is empty")
	require.Empty(t, g.queue)
}

// A failing change rolls back only itself: it gets its own error, and the
// changes batched with it commit.
func TestGroupCommitFailureIsolated(t *testing.T) {
	t.Parallel()
	db, g := openCommitDB(t)
	boom := errors.New("boom")
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]error{}
	for i := range 40 {
		key := fmt.Sprintf("k%02d", i)
		fn := put(key)
		switch i % 10 {
		case 3:
			fn = func(tx *bolt.Tx) error {
				if err := put(key)(tx); err != nil {
					return err
				}
				return boom // after a write: the write must not survive
			}
		case 7:
			fn = func(*bolt.Tx) error { panic("bad change " + key) }
		}
		wg.Go(func() {
			defer func() {
				if p := recover(); p != nil {
					mu.Lock()
					got[key] = fmt.Errorf("panic: %v", p)
					mu.Unlock()
				}
			}()
			err := g.run(fn)
			mu.Lock()
			got[key] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	var want []string
	for i := range 40 {
		key := fmt.Sprintf("k%02d", i)
		switch i % 10 {
		case 3:
			require.ErrorIs(t, got[key], boom, key)
		case 7:
			require.ErrorContains(t, got[key], "bad change "+key)
		default:
			require.NoError(t, got[key], key)
			want = append(want, key)
		}
	}
	require.Equal(t, want, keys(t, db))
}
