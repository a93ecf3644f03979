package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// TestListJobsAndStats: the specification's two monitoring queries — jobs
// currently in retry backoff, and the retry success rate per phase.
func TestListJobsAndStats(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		opt := defaultOptions()
		opt.policy.Delays = []time.Duration{time.Hour} // keep retries in backoff
		b := setup(t, kind, opt)
		ctx := context.Background()

		// Three jobs in backoff (extraction ×2, chunking), one failed, one completed.
		for i, phase := range []string{"extraction", "extraction", "chunking"} {
			_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
				JobId: fmt.Sprintf("backoff-%d", i), Phase: phase, ErrorType: "ConnectionError", ErrorMessage: "refused",
				Labels: map[string]string{"document_id": fmt.Sprintf("doc-%d", i), "source_name": "file.pdf"},
			})
			require.NoError(t, err)
		}
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "failed", Phase: "extraction", ErrorType: "ValidationError"})
		require.NoError(t, err)
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "done", Phase: "kg_ingest"})
		require.NoError(t, err)

		list, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{InBackoff: true})
		require.NoError(t, err)
		require.Len(t, list.GetJobs(), 3)
		for _, j := range list.GetJobs() {
			require.Equal(t, retrydv1.JobState_JOB_STATE_PROCESSING, j.GetState())
			require.NotNil(t, j.GetNextAttemptAt())
			require.NotNil(t, j.GetFailedAt())
			require.GreaterOrEqual(t, j.GetSecondsSinceFailure(), 0.0)
			require.Equal(t, uint32(0), j.GetRetryCount())
			require.Equal(t, "ConnectionError", j.GetLastErrorType())
			require.Equal(t, "file.pdf", j.GetLabels()["source_name"])
		}
		list, err = b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{InBackoff: true, Phase: "chunking"})
		require.NoError(t, err)
		require.Len(t, list.GetJobs(), 1)
		require.Equal(t, "backoff-2", list.GetJobs()[0].GetJobId())

		list, err = b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{State: retrydv1.JobState_JOB_STATE_FAILED})
		require.NoError(t, err)
		require.Len(t, list.GetJobs(), 1)
		require.Equal(t, "failed", list.GetJobs()[0].GetJobId())

		// Pagination visits every job exactly once.
		seen := map[string]int{}
		token := ""
		for {
			page, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{PageSize: 2, PageToken: token})
			require.NoError(t, err)
			require.LessOrEqual(t, len(page.GetJobs()), 2)
			for _, j := range page.GetJobs() {
				seen[j.GetJobId()]++
			}
			if token = page.GetNextPageToken(); token == "" {
				break
			}
		}
		require.Equal(t, map[string]int{"backoff-0": 1, "backoff-1": 1, "backoff-2": 1, "failed": 1, "done": 1}, seen)

	})
}

// TestRetryStats: the specification's success-rate query per phase.
func TestRetryStats(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		b := setup(t, kind, defaultOptions())
		ctx := context.Background()
		w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, MaxInFlight: 1})
		// s1 fails once and its retry succeeds; s2 fails four times.
		for _, id := range []string{"s1", "s2"} {
			_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: id, Phase: "extraction", ErrorType: "Timeout"})
			require.NoError(t, err)
		}
		done := 0
		for done < 2 {
			r := w.next(t).task
			if r.GetJobId() == "s1" {
				_, err := b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "s1", Phase: "extraction", RetryCount: r.GetRetryCount(), LeaseId: r.GetLeaseId()})
				require.NoError(t, err)
				done++
				continue
			}
			resp, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
				JobId: "s2", Phase: "extraction", RetryCount: r.GetRetryCount(), LeaseId: r.GetLeaseId(), ErrorType: "Timeout",
			})
			require.NoError(t, err)
			if resp.GetDecision() == retrydv1.Decision_DECISION_GIVE_UP {
				done++
			}
		}
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "s3", Phase: "chunking", ErrorType: "ValidationError"})
		require.NoError(t, err)

		stats, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{})
		require.NoError(t, err)
		require.NotNil(t, stats.GetSince())
		require.Len(t, stats.GetPhases(), 2)
		ex, ch := stats.GetPhases()[1], stats.GetPhases()[0]
		require.Equal(t, "extraction", ex.GetPhase(), "phases sorted by name")
		require.Equal(t, uint64(6), ex.GetAttempts())
		require.Equal(t, uint64(4), ex.GetTotalRetries())
		require.Equal(t, uint64(1), ex.GetSuccessfulRetries())
		require.Equal(t, 25.0, ex.GetSuccessRatePct())
		require.Equal(t, uint64(1), ex.GetGivenUp())
		require.Equal(t, map[string]uint64{"Timeout": 5}, ex.GetFailuresByErrorType())
		require.Equal(t, "chunking", ch.GetPhase())
		require.Equal(t, uint64(0), ch.GetTotalRetries())
		require.Equal(t, 0.0, ch.GetSuccessRatePct())
		require.Equal(t, map[string]uint64{"ValidationError": 1}, ch.GetFailuresByErrorType())

		only, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{Phase: "chunking"})
		require.NoError(t, err)
		require.Len(t, only.GetPhases(), 1)
	})
}
