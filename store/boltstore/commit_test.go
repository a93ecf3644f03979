package boltstore

import (
	"errors"
	"fmt"
	"os"
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

// waitQueued returns once n changes wait in g's queue (behind a commit the
// test holds).
func waitQueued(g *groupCommit, n int) {
	for queued := 0; queued < n; {
		runtime.Gosched()
		g.mu.Lock()
		queued = len(g.queue)
		g.mu.Unlock()
	}
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
	waitQueued(g, n)
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

// txid is the id of the last committed transaction.
func txid(t *testing.T, db *bolt.DB) int {
	t.Helper()
	var id int
	require.NoError(t, db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }))
	return id
}

// fileBytes reads the whole file, to show that a skipped commit wrote nothing.
func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// update commits exactly the transactions that changed something: every
// kind of change bbolt has materialises a node (what changed relies on),
// and no read does, so reads alone leave the file as it was.
func TestUpdateSkipsEmptyCommits(t *testing.T) {
	t.Parallel()
	db, _ := openCommitDB(t)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucket([]byte("sub")); err != nil {
			return err
		}
		return put("a")(tx)
	}))
	reads := func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		_ = b.Get([]byte("a"))
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
		}
		c.Seek([]byte("zzz"))
		_ = b.Stats()
		if err := b.Delete([]byte("absent")); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists([]byte("sub")); err != nil {
			return err
		}
		_ = tx.Bucket([]byte("sub")).Sequence()
		return nil
	}
	for name, fn := range map[string]func(*bolt.Tx) error{
		"reads": reads,
		"refused": func(tx *bolt.Tx) error {
			_ = reads(tx)
			return errors.New("refused")
		},
	} {
		id, before := txid(t, db), fileBytes(t, db.Path())
		err := update(db, fn)
		if name == "refused" {
			require.EqualError(t, err, "refused")
		} else {
			require.NoError(t, err)
		}
		require.Equal(t, id, txid(t, db), "%s: no commit", name)
		require.Equal(t, before, fileBytes(t, db.Path()), "%s: the file is untouched", name)
	}

	for _, c := range []struct {
		name string
		fn   func(*bolt.Tx) error
	}{
		{"put", put("b")},
		{"delete", func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Delete([]byte("a")) }},
		{"create bucket", func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("new")); return err }},
		{"delete bucket", func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("new")) }},
		{"set sequence", func(tx *bolt.Tx) error { return tx.Bucket([]byte("sub")).SetSequence(7) }},
		{"next sequence", func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte("sub")).NextSequence()
			return err
		}},
	} {
		id := txid(t, db)
		require.NoError(t, update(db, c.fn), c.name)
		require.Equal(t, id+1, txid(t, db), "%s commits", c.name)
	}
	require.Equal(t, []string{"b"}, keys(t, db))

	require.PanicsWithValue(t, "boom", func() {
		_ = update(db, func(tx *bolt.Tx) error {
			_ = put("c")(tx)
			panic("boom")
		})
	})
	require.NoError(t, update(db, put("d")), "a panic releases the writer lock")
	require.Equal(t, []string{"b", "d"}, keys(t, db), "a panicked change is rolled back")
}

// A batch commits when any of its changes wrote, and is rolled back when
// none did; every caller gets nil either way.
func TestGroupCommitSkipsEmptyBatches(t *testing.T) {
	t.Parallel()
	db, g := openCommitDB(t)
	read := func(tx *bolt.Tx) error { _ = tx.Bucket([]byte("b")).Get([]byte("x")); return nil }
	for _, c := range []struct {
		name   string
		writes int
	}{{"reads only", 0}, {"one write among reads", 1}} {
		id := txid(t, db)
		started, release := make(chan struct{}), make(chan struct{})
		first := make(chan error, 1)
		go func() {
			first <- g.run(func(tx *bolt.Tx) error { close(started); <-release; return read(tx) })
		}()
		<-started
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			fn := read
			if i < c.writes {
				fn = put(c.name)
			}
			wg.Go(func() { errs[i] = g.run(fn) })
		}
		waitQueued(g, len(errs))
		close(release)
		wg.Wait()
		require.NoError(t, <-first)
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, id+c.writes, txid(t, db), "%s: commits", c.name)
	}
	require.Equal(t, []string{"one write among reads"}, keys(t, db))
}
