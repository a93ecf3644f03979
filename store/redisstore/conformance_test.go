package redisstore

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/storetest"
)

// TestConformance runs the shared store suite. Its subtests share one
// redis-server; each gets a store of its own through a fresh key prefix.
func TestConformance(t *testing.T) {
	srv := testredis.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, opts storetest.Options) store.Store {
		s, err := Open(t.Context(), srv.URL(), Options{
			Prefix:          fmt.Sprintf("conformance-%d", n.Add(1)),
			JobRetention:    opts.JobRetention,
			StatsRetention:  opts.StatsRetention,
			MaxTerminalJobs: opts.MaxTerminalJobs,
		})
		require.NoError(t, err)
		return s
	})
}
