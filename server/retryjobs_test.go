package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/teststore"
	"github.com/retryd/retryd/store"
)

// giveUp reports a failure retryd gives up on at once (HTTP 4xx).
func giveUp(t *testing.T, b *bundle, job, phase, errType string) {
	t.Helper()
	resp, err := b.retry.ReportFailure(context.Background(), &retrydv1.ReportFailureRequest{
		JobId: job, Phase: phase, ErrorType: errType, HttpStatus: 404})
	require.NoError(t, err)
	require.Equal(t, retrydv1.Decision_DECISION_GIVE_UP, resp.GetDecision())
}

func stateOf(t *testing.T, b *bundle, job string) retrydv1.JobState {
	t.Helper()
	got, err := b.admin.GetJob(context.Background(), &retrydv1.GetJobRequest{JobId: job})
	require.NoError(t, err)
	return got.GetJob().GetState()
}

func ids(jobs []*retrydv1.JobSummary) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.GetJobId()
	}
	return out
}

// TestRetryJobs: the failed jobs that match the filters are re-driven, page
// by page, newest first; a dry run changes nothing; other jobs are left
// alone.
func TestRetryJobs(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		opt := defaultOptions()
		opt.policy.Delays = []time.Duration{time.Hour} // in-backoff stays in backoff
		b := setup(t, kind, opt)
		ctx := context.Background()
		for _, j := range []struct{ id, phase, errType string }{
			{"nf-1", "extraction", "NotFound"},
			{"other-phase", "chunking", "NotFound"},
			{"nf-2", "extraction", "NotFound"},
			{"forbidden", "extraction", "Forbidden"},
			{"nf-3", "extraction", "NotFound"},
		} {
			giveUp(t, b, j.id, j.phase, j.errType)
		}
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "in-backoff", Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)

		req := &retrydv1.RetryJobsRequest{Phase: "extraction", ErrorTypes: []string{"NotFound"}, DryRun: true}
		dry, err := b.admin.RetryJobs(ctx, req)
		require.NoError(t, err)
		require.Equal(t, []string{"nf-3", "nf-2", "nf-1"}, ids(dry.GetJobs()), "newest first")
		require.Empty(t, dry.GetNextPageToken())
		for _, id := range []string{"nf-1", "nf-2", "nf-3"} {
			require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, stateOf(t, b, id), "a dry run changes nothing")
		}

		// For real, two failed jobs examined per call.
		req.DryRun, req.PageSize = false, 2
		var redriven []string
		for {
			page, err := b.admin.RetryJobs(ctx, req)
			require.NoError(t, err)
			require.Empty(t, page.GetSkippedJobIds())
			for _, j := range page.GetJobs() {
				require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, j.GetState(), "as it was before")
				require.Equal(t, "NotFound", j.GetLastErrorType())
			}
			redriven = append(redriven, ids(page.GetJobs())...)
			if req.PageToken = page.GetNextPageToken(); req.PageToken == "" {
				break
			}
		}
		require.ElementsMatch(t, []string{"nf-1", "nf-2", "nf-3"}, redriven)
		for _, id := range redriven {
			require.Equal(t, retrydv1.JobState_JOB_STATE_PROCESSING, stateOf(t, b, id))
		}
		require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, stateOf(t, b, "forbidden"), "another error type")
		require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, stateOf(t, b, "other-phase"), "another phase")

		// Nothing failed since the future; nothing left of NotFound in extraction.
		again, err := b.admin.RetryJobs(ctx, &retrydv1.RetryJobsRequest{FailedSince: timestamppb.New(time.Now().Add(time.Hour))})
		require.NoError(t, err)
		require.Empty(t, again.GetJobs())
		require.Empty(t, again.GetNextPageToken(), "the listing stops at the first older job")
		again, err = b.admin.RetryJobs(ctx, &retrydv1.RetryJobsRequest{Phase: "extraction", ErrorTypes: []string{"NotFound"}})
		require.NoError(t, err)
		require.Empty(t, again.GetJobs())

		// No filter: the rest of the failed jobs.
		rest, err := b.admin.RetryJobs(ctx, &retrydv1.RetryJobsRequest{})
		require.NoError(t, err)
		require.ElementsMatch(t, []string{"forbidden", "other-phase"}, ids(rest.GetJobs()))
	})
}

// TestRetryJobsBadInput: a malformed request is refused with
// INVALID_ARGUMENT naming the field, and changes nothing.
func TestRetryJobsBadInput(t *testing.T) {
	b := setup(t, "bolt", defaultOptions())
	giveUp(t, b, "j", "extraction", "NotFound")
	for _, req := range []*retrydv1.RetryJobsRequest{
		{PageSize: 1001},
		{ErrorTypes: []string{"NotFound", ""}},
		{Phase: "not a phase!"},
		{FailedSince: &timestamppb.Timestamp{Seconds: -1 << 62}},
		{PageToken: "not a cursor this store made"},
	} {
		_, err := b.admin.RetryJobs(context.Background(), req)
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v: %v", req, err)
	}
	require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, stateOf(t, b, "j"))
}

// racedList is a store on which every failed job listed is re-driven by
// someone else (another operator, a RetryJob call) right after the listing.
type racedList struct{ store.Store }

func (s racedList) ListJobs(ctx context.Context, q store.ListQuery) (store.JobPage, error) {
	page, err := s.Store.ListJobs(ctx, q)
	for _, j := range page.Jobs {
		if _, err := s.Store.RetryJob(ctx, j.ID, "", time.Now()); err != nil {
			return store.JobPage{}, err
		}
	}
	return page, err
}

// TestRetryJobsSkipsWhatChanged: a job that stopped being failed between
// the listing and its re-drive is reported as skipped, not re-driven again.
func TestRetryJobsSkipsWhatChanged(t *testing.T) {
	st := teststore.New(t, "bolt")
	b := setupOn(t, racedList{st}, defaultOptions())
	giveUp(t, b, "j", "extraction", "NotFound")
	resp, err := b.admin.RetryJobs(context.Background(), &retrydv1.RetryJobsRequest{})
	require.NoError(t, err)
	require.Empty(t, resp.GetJobs())
	require.Equal(t, []string{"j"}, resp.GetSkippedJobIds())
	job, err := st.GetJob(context.Background(), "j")
	require.NoError(t, err)
	require.EqualValues(t, 2, job.Cycle, "re-driven once, by the other caller")
}
