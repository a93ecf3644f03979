package fault_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// TestCountBoundAtStart: a Redis holding more terminal jobs than
// --max-terminal-jobs is trimmed by the janitor's first run at start, the
// least recently updated first, and never silently: the run is logged with
// its counts and counted in retryd_jobs_expired_total{reason="count"}.
func TestCountBoundAtStart(t *testing.T) {
	srv := testredis.Start(t)
	st := openStore(t, srv)
	ctx := context.Background()
	base := time.Now().Add(-time.Hour)
	for i := range 30 {
		_, err := st.RecordSuccess(ctx, store.Success{JobID: fmt.Sprintf("done-%02d", i), Phase: "extraction", Now: base.Add(time.Duration(i) * time.Second)})
		require.NoError(t, err)
	}
	// A processing job, older than all of them, is never counted.
	_, err := st.RecordFailure(ctx, store.Failure{
		JobID: "still-running", Phase: "extraction", ErrorType: "Timeout", Now: base.Add(-time.Hour),
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "test", NextRetryCount: 1, Delay: 24 * time.Hour, DueAt: base.Add(23 * time.Hour)},
	})
	require.NoError(t, err)

	p := startProc(t, "A", nil, replicaArgs(srv.URL(), "--max-terminal-jobs", "10")...)
	require.Eventually(t, func() bool {
		return len(p.logs.matching("janitor: retention removed old data", "jobs_removed_by_age=0", "jobs_removed_by_count=20")) == 1
	}, 10*time.Second, 10*time.Millisecond, "the janitor's first run logs what it removed")
	require.Equal(t, 20.0, p.metric(t, `retryd_jobs_expired_total{reason="count"}`))
	require.Equal(t, 0.0, p.metric(t, `retryd_jobs_expired_total{reason="age"}`))

	kept := listAll(t, st, store.ListQuery{})
	var ids []string
	for _, j := range kept {
		ids = append(ids, j.ID)
	}
	want := []string{"still-running"}
	for i := 29; i >= 20; i-- {
		want = append(want, fmt.Sprintf("done-%02d", i))
	}
	require.ElementsMatch(t, want, ids, "the ten most recently updated terminal jobs and the processing one are kept")
}
