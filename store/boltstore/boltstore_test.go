package boltstore

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open opens a store in a fresh directory of the test.
func open(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "retryd.db"), opts)
	require.NoError(t, err)
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, o storetest.Options) store.Store {
		return open(t, Options{JobRetention: o.JobRetention, StatsRetention: o.StatsRetention, MaxTerminalJobs: o.MaxTerminalJobs})
	})
}
