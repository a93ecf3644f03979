package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/scheduler"
)

// lagTolerance is how late a retry may arrive in these tests: generous,
// because -race and two cores slow everything; the benchmark measures the
// real lag.
const lagTolerance = 250 * time.Millisecond

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

func code(err error) codes.Code { return status.Code(err) }

// TestSpecTestingRetries is the specification's "Testing Retries" scenario
// over gRPC with a real Dispatch stream as the worker: a job that always
// fails in extraction is attempted at +0, +D1, +D1+D2, +D1+D2+D3, then
// fails for good with 4 failed attempts in its history. With
// EXTRACTION_MAX_RETRIES=5 it runs 6 times, the last delay repeating.
func TestSpecTestingRetries(t *testing.T) {
	five := 5
	cases := []struct {
		name      string
		overrides map[string]scheduler.PhaseOverride
		want      []time.Duration
	}{
		{"default", nil, scaled},
		{"extraction_max_retries_5", map[string]scheduler.PhaseOverride{"extraction": {MaxRetries: &five}},
			[]time.Duration{scaled[0], scaled[1], scaled[2], scaled[2], scaled[2]}},
	}
	forEachStore(t, func(t *testing.T, kind string) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				opt := defaultOptions()
				opt.policy.Phases = tc.overrides
				b := setup(t, kind, opt)
				ctx := context.Background()
				w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w1", MaxInFlight: 1})
				payload := mustStruct(t, map[string]any{"document_id": "doc-1", "source_location": "invalid://location"})
				labels := map[string]string{"document_id": "doc-1", "source_name": "test.pdf"}
				const job = "job-spec"

				sent := time.Now()
				resp, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
					JobId: job, Phase: "extraction", RetryCount: 0,
					ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: "cannot reach invalid://location",
					Payload: payload, Labels: labels,
				})
				require.NoError(t, err)
				require.Equal(t, retrydv1.Decision_DECISION_RETRY, resp.GetDecision())
				require.Equal(t, uint32(1), resp.GetNextRetryCount())
				require.Equal(t, tc.want[0], resp.GetDelay().AsDuration(), "jitter 0 gives exact delays")

				for i, delay := range tc.want {
					r := w.next(t)
					gap := r.at.Sub(sent)
					require.GreaterOrEqual(t, gap, delay, "retry %d arrived early", i+1)
					require.Less(t, gap, delay+lagTolerance, "retry %d arrived late", i+1)
					require.Equal(t, uint32(i+1), r.task.GetRetryCount())
					require.Equal(t, "extraction", r.task.GetPhase())
					require.True(t, proto.Equal(payload, r.task.GetPayload()), "payload: got %v", r.task.GetPayload())
					require.Equal(t, labels, r.task.GetLabels())
					require.NotEmpty(t, r.task.GetLeaseId())

					sent = time.Now()
					resp, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
						JobId: job, Phase: "extraction", RetryCount: r.task.GetRetryCount(), LeaseId: r.task.GetLeaseId(),
						ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: fmt.Sprintf("still down (%d)", i+1),
					})
					require.NoError(t, err)
					if i+1 < len(tc.want) {
						require.Equal(t, retrydv1.Decision_DECISION_RETRY, resp.GetDecision(), resp.GetReason())
						require.Equal(t, tc.want[i+1], resp.GetDelay().AsDuration())
					} else {
						require.Equal(t, retrydv1.Decision_DECISION_GIVE_UP, resp.GetDecision(), resp.GetReason())
						require.True(t, resp.GetRetryable())
					}
				}
				w.none(t, 50*time.Millisecond)

				got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: job})
				require.NoError(t, err)
				j := got.GetJob()
				require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, j.GetState())
				require.Equal(t, "requests.exceptions.ConnectionError", j.GetFinalErrorType())
				require.Equal(t, fmt.Sprintf("still down (%d)", len(tc.want)), j.GetFinalError())
				require.Equal(t, uint32(len(tc.want)), j.GetTotalRetries())
				require.Nil(t, j.GetNextAttemptAt())
				require.Len(t, j.GetAttempts(), len(tc.want)+1)
				for i, a := range j.GetAttempts() {
					require.Equal(t, "extraction", a.GetPhase())
					require.Equal(t, uint32(i), a.GetRetryCount())
					require.Equal(t, retrydv1.AttemptStatus_ATTEMPT_STATUS_FAILED, a.GetStatus())
					require.Equal(t, "requests.exceptions.ConnectionError", a.GetErrorType())
					require.NotNil(t, a.GetFinishedAt())
				}
				if len(tc.want) > 0 {
					require.Equal(t, "w1", j.GetAttempts()[1].GetWorkerId(), "a dispatched attempt names its worker")
				}
			})
		}
	})
}

// TestNonRetryableThenManualRetry: a non-retryable error gives up after one
// attempt; RetryJob re-drives the phase with retry_count 0 and its stored
// payload; the preconditions of RetryJob hold.
func TestNonRetryableThenManualRetry(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		b := setup(t, kind, defaultOptions())
		ctx := context.Background()
		w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction", "chunking"}, WorkerId: "w", MaxInFlight: 4})
		payload := mustStruct(t, map[string]any{"document_id": "doc-7", "pages": 3.0})

		resp, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: "job-7", Phase: "extraction", ErrorType: "ValidationError", ErrorMessage: "bad PDF", Payload: payload,
		})
		require.NoError(t, err)
		require.Equal(t, retrydv1.Decision_DECISION_GIVE_UP, resp.GetDecision())
		require.False(t, resp.GetRetryable())
		require.Contains(t, resp.GetReason(), "ValidationError")
		w.none(t, 50*time.Millisecond)

		got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "job-7"})
		require.NoError(t, err)
		require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, got.GetJob().GetState())
		require.Len(t, got.GetJob().GetAttempts(), 1)
		require.Equal(t, uint32(0), got.GetJob().GetTotalRetries())

		// Not failed → FAILED_PRECONDITION; unknown → NOT_FOUND.
		_, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "job-busy", Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)
		_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-busy"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "no-such-job"})
		require.Equal(t, codes.NotFound, code(err), "%v", err)
		// job-busy's own retry arrives; report it done so it does not linger.
		r := w.next(t)
		require.Equal(t, "job-busy", r.task.GetJobId())
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "job-busy", Phase: "extraction", RetryCount: 1, LeaseId: r.task.GetLeaseId()})
		require.NoError(t, err)

		// Manual retry: dispatched now, retry_count 0, stored payload, new cycle.
		rj, err := b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-7"})
		require.NoError(t, err)
		require.Equal(t, retrydv1.JobState_JOB_STATE_PROCESSING, rj.GetJob().GetState())
		require.Equal(t, uint32(2), rj.GetJob().GetCycle())
		r = w.next(t)
		require.Equal(t, "job-7", r.task.GetJobId())
		require.Equal(t, "extraction", r.task.GetPhase())
		require.Equal(t, uint32(0), r.task.GetRetryCount())
		require.Equal(t, uint32(2), r.task.GetCycle())
		require.True(t, proto.Equal(payload, r.task.GetPayload()))

		// This time extraction succeeds and hands over to chunking, which fails for good.
		next := mustStruct(t, map[string]any{"text_location": "s3://bucket/doc-7.txt"})
		sr, err := b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
			JobId: "job-7", Phase: "extraction", RetryCount: 0, LeaseId: r.task.GetLeaseId(),
			NextPhase: "chunking", NextPayload: next,
		})
		require.NoError(t, err)
		require.Equal(t, retrydv1.JobState_JOB_STATE_PROCESSING, sr.GetState())
		resp, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: "job-7", Phase: "chunking", ErrorType: "InvalidFileFormat", ErrorMessage: "not text",
		})
		require.NoError(t, err)
		require.Equal(t, retrydv1.Decision_DECISION_GIVE_UP, resp.GetDecision())

		// RetryJob with from_phase re-drives extraction although chunking failed last.
		rj, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-7", FromPhase: "extraction"})
		require.NoError(t, err)
		require.Equal(t, uint32(3), rj.GetJob().GetCycle())
		r = w.next(t)
		require.Equal(t, "extraction", r.task.GetPhase())
		require.True(t, proto.Equal(payload, r.task.GetPayload()))
		_, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: "job-7", Phase: "extraction", LeaseId: r.task.GetLeaseId(), ErrorType: "ValidationError",
		})
		require.NoError(t, err)

		// Without from_phase: the most recent failed phase (extraction now).
		_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-7"})
		require.NoError(t, err)
		r = w.next(t)
		require.Equal(t, "extraction", r.task.GetPhase())
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
			JobId: "job-7", Phase: "extraction", LeaseId: r.task.GetLeaseId(), NextPhase: "chunking", NextPayload: next,
		})
		require.NoError(t, err)
		// A RetryJob from a phase the job never ran is refused.
		_, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "job-7", Phase: "chunking", ErrorType: "ValidationError"})
		require.NoError(t, err)
		_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-7", FromPhase: "kg_ingest"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		// Re-driving chunking uses the payload the extraction success handed over.
		_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "job-7"})
		require.NoError(t, err)
		r = w.next(t)
		require.Equal(t, "chunking", r.task.GetPhase())
		require.True(t, proto.Equal(next, r.task.GetPayload()), "got %v", r.task.GetPayload())

		got, err = b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "job-7"})
		require.NoError(t, err)
		require.Len(t, got.GetJob().GetAttempts(), 6, "the last chunking task is leased, not reported")
	})
}

// TestDuplicateReports: the same ReportFailure sent twice, and 20 times
// concurrently, returns one decision and schedules exactly one retry.
func TestDuplicateReports(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		opt := defaultOptions()
		opt.policy.Jitter = 0.5 // a second decision would differ
		b := setup(t, kind, opt)
		ctx := context.Background()
		req := &retrydv1.ReportFailureRequest{JobId: "dup", Phase: "extraction", ErrorType: "Timeout", ErrorMessage: "slow"}
		first, err := b.retry.ReportFailure(ctx, req)
		require.NoError(t, err)
		again, err := b.retry.ReportFailure(ctx, req)
		require.NoError(t, err)
		require.True(t, proto.Equal(first, again), "first %v, again %v", first, again)

		var wg sync.WaitGroup
		answers := make([]*retrydv1.ReportFailureResponse, 20)
		errs := make([]error, 20)
		creq := &retrydv1.ReportFailureRequest{JobId: "dup-concurrent", Phase: "extraction", ErrorType: "Timeout"}
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i], errs[i] = b.retry.ReportFailure(ctx, creq)
			}()
		}
		wg.Wait()
		for i := range answers {
			require.NoError(t, errs[i])
			require.True(t, proto.Equal(answers[0], answers[i]), "answer %d differs: %v vs %v", i, answers[i], answers[0])
		}
		for _, id := range []string{"dup", "dup-concurrent"} {
			got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
			require.NoError(t, err)
			require.Len(t, got.GetJob().GetAttempts(), 1)
		}
		w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, MaxInFlight: 10})
		seen := map[string]int{}
		for range 2 {
			seen[w.next(t).task.GetJobId()]++
		}
		require.Equal(t, map[string]int{"dup": 1, "dup-concurrent": 1}, seen)
		w.none(t, 100*time.Millisecond)
	})
}

// TestLeaseExpiryRedelivers: a dispatched task whose worker never reports
// comes back after its lease as the next attempt (LeaseExpired, retryable).
func TestLeaseExpiryRedelivers(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		b := setup(t, kind, defaultOptions())
		ctx := context.Background()
		w := b.dispatch(t, &retrydv1.DispatchRequest{
			Phases: []string{"extraction"}, WorkerId: "silent", MaxInFlight: 1,
			LeaseDuration: durationpb.New(50 * time.Millisecond),
		})
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "lost", Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)
		first := w.next(t)
		require.Equal(t, uint32(1), first.task.GetRetryCount())
		// No report: the lease expires, the attempt fails as LeaseExpired,
		// and retry 2 arrives after the second delay.
		second := w.next(t)
		require.Equal(t, "lost", second.task.GetJobId())
		require.Equal(t, uint32(2), second.task.GetRetryCount())
		require.False(t, second.at.Before(first.task.GetLeaseExpiresAt().AsTime().Add(scaled[1])),
			"the retry came before the lease expired plus the second delay")

		// The late worker's report of the expired lease is refused.
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "lost", Phase: "extraction", RetryCount: 1, LeaseId: first.task.GetLeaseId()})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)

		got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "lost"})
		require.NoError(t, err)
		atts := got.GetJob().GetAttempts()
		require.Len(t, atts, 2)
		require.Equal(t, scheduler.LeaseExpiredType, atts[1].GetErrorType())
		require.Equal(t, "silent", atts[1].GetWorkerId())
		require.Equal(t, retrydv1.Decision_DECISION_RETRY, atts[1].GetDecision())
	})
}
