// Package teststore opens a fresh store of each kind for tests above the
// store layer (server, app, end-to-end), so that every such test runs on
// both backends.
package teststore

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/boltstore"
	"github.com/retryd/retryd/store/redisstore"
)

// Kinds are the store backends, by name.
var Kinds = []string{"redis", "bolt"}

// New opens an empty store of the given kind, closed at cleanup. A Redis
// store gets its own redis-server process.
func New(t testing.TB, kind string) store.Store {
	t.Helper()
	var (
		st  store.Store
		err error
	)
	switch kind {
	case "redis":
		srv := testredis.Start(t)
		st, err = redisstore.Open(context.Background(), srv.URL(), redisstore.Options{})
	case "bolt":
		st, err = boltstore.Open(filepath.Join(t.TempDir(), "retryd.db"), boltstore.Options{})
	default:
		t.Fatalf("teststore: unknown kind %q", kind)
	}
	if err != nil {
		t.Fatalf("teststore: open %s store: %v", kind, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}
