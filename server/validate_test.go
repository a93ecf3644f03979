package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// hostile are strings that break naive quoting in Lua, SQL, JSON and logs.
var hostile = []string{
	`it's "quoted" \ back\slash`,
	"line one\nline two\r\n\ttab",
	"]] end of a Lua long string ]==]",
	"{} {\"json\": true} {{template}}",
	"'); DROP TABLE pipeline_job; --",
	"redis.call('FLUSHALL') return 1 --",
	"KEYS[1] ARGV[1] \x00 NUL and ünïcødé ✓",
	strings.Repeat("x", 60<<10),
}

// TestHostileStringsRoundTrip: error messages, labels and payload values
// with quoting hazards are stored and returned byte for byte.
func TestHostileStringsRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		b := setup(t, kind, defaultOptions())
		ctx := context.Background()
		for i, s := range hostile {
			id := "hostile-" + string(rune('a'+i))
			payload := mustStruct(t, map[string]any{"text": s, "nested": map[string]any{"list": []any{s, 1.5, true, nil}}})
			labels := map[string]string{"source_name": s[:min(len(s), 1000)]}
			_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
				JobId: id, Phase: "extraction", ErrorType: "ValidationError", ErrorMessage: s, Payload: payload, Labels: labels,
			})
			require.NoError(t, err, "string %d", i)
			got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
			require.NoError(t, err)
			j := got.GetJob()
			require.Equal(t, s, j.GetFinalError(), "string %d", i)
			require.Equal(t, s, j.GetAttempts()[0].GetErrorMessage())
			require.Equal(t, labels, j.GetLabels())
			require.True(t, proto.Equal(payload, j.GetAttempts()[0].GetPayload()), "payload %d", i)
		}
	})
}

// TestBadInputChangesNothing: every malformed request gets INVALID_ARGUMENT
// naming the field, and the store is left as it was.
func TestBadInputChangesNothing(t *testing.T) {
	opt := defaultOptions()
	opt.payload = 1024
	b := setup(t, "bolt", opt)
	ctx := context.Background()
	big := mustStruct(t, map[string]any{"blob": strings.Repeat("p", 2048)})
	ok := func() *retrydv1.ReportFailureRequest {
		return &retrydv1.ReportFailureRequest{JobId: "victim", Phase: "extraction", ErrorType: "Timeout"}
	}
	failures := []struct {
		field  string
		mutate func(r *retrydv1.ReportFailureRequest)
	}{
		{"job_id", func(r *retrydv1.ReportFailureRequest) { r.JobId = "" }},
		{"job_id", func(r *retrydv1.ReportFailureRequest) { r.JobId = strings.Repeat("j", 257) }},
		{"job_id", func(r *retrydv1.ReportFailureRequest) { r.JobId = "has space" }},
		{"phase", func(r *retrydv1.ReportFailureRequest) { r.Phase = "" }},
		{"phase", func(r *retrydv1.ReportFailureRequest) { r.Phase = "Extraction'; --" }},
		{"error_type", func(r *retrydv1.ReportFailureRequest) { r.ErrorType = "" }},
		{"error_type", func(r *retrydv1.ReportFailureRequest) { r.ErrorType = "two words" }},
		{"error_message", func(r *retrydv1.ReportFailureRequest) { r.ErrorMessage = strings.Repeat("m", 65<<10) }},
		{"http_status", func(r *retrydv1.ReportFailureRequest) { r.HttpStatus = 42 }},
		{"retry_count", func(r *retrydv1.ReportFailureRequest) { r.RetryCount = 1 << 20 }},
		{"retry_after", func(r *retrydv1.ReportFailureRequest) { r.RetryAfter = durationpb.New(-time.Second) }},
		{"retry_after", func(r *retrydv1.ReportFailureRequest) { r.RetryAfter = durationpb.New(30 * 24 * time.Hour) }},
		{"labels", func(r *retrydv1.ReportFailureRequest) { r.Labels = map[string]string{"bad key": "v"} }},
		{"payload", func(r *retrydv1.ReportFailureRequest) { r.Payload = big }},
		{"lease_id", func(r *retrydv1.ReportFailureRequest) { r.LeaseId = "a\nb" }},
	}
	for _, f := range failures {
		req := ok()
		f.mutate(req)
		_, err := b.retry.ReportFailure(ctx, req)
		require.Equal(t, codes.InvalidArgument, code(err), "%s: %v", f.field, err)
		require.Contains(t, err.Error(), f.field+":", "the message names the field")
	}
	_, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "victim"})
	require.Equal(t, codes.NotFound, code(err), "a rejected report stored nothing")

	// The same against an existing job: it stays exactly as it was.
	_, err = b.retry.ReportFailure(ctx, ok())
	require.NoError(t, err)
	before, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "victim"})
	require.NoError(t, err)
	for _, f := range failures {
		req := ok()
		req.RetryCount = 1
		f.mutate(req)
		if req.JobId != "victim" {
			continue
		}
		_, err := b.retry.ReportFailure(ctx, req)
		require.Equal(t, codes.InvalidArgument, code(err), "%s: %v", f.field, err)
	}
	after, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "victim"})
	require.NoError(t, err)
	require.True(t, proto.Equal(before, after), "before %v\nafter %v", before, after)

	// Other RPCs.
	checks := []struct {
		field string
		call  func() error
	}{
		{"phase", func() error {
			_, err := b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "x", Phase: "no such"})
			return err
		}},
		{"next_payload", func() error {
			_, err := b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "x", Phase: "a", NextPayload: &structpb.Struct{}})
			return err
		}},
		{"lease_id", func() error {
			_, err := b.retry.ExtendLease(ctx, &retrydv1.ExtendLeaseRequest{JobId: "x"})
			return err
		}},
		{"job_id", func() error { _, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{}); return err }},
		{"from_phase", func() error {
			_, err := b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "x", FromPhase: "../etc"})
			return err
		}},
		{"page_size", func() error {
			_, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{PageSize: 5000})
			return err
		}},
		{"state", func() error {
			_, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{State: 99})
			return err
		}},
		{"window", func() error {
			_, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{Window: durationpb.New(time.Minute)})
			return err
		}},
		{"phases", func() error {
			s, err := b.retry.Dispatch(ctx, &retrydv1.DispatchRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
		{"lease_duration", func() error {
			s, err := b.retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"a"}, LeaseDuration: durationpb.New(48 * time.Hour)})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	}
	for _, c := range checks {
		err := c.call()
		require.Equal(t, codes.InvalidArgument, code(err), "%s: %v", c.field, err)
		require.Contains(t, err.Error(), c.field+":")
	}
}

// TestHealthAndPreconditions: health answers SERVING once the store answers;
// store sentinels surface as the documented codes.
func TestHealthAndPreconditions(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		b := setup(t, kind, defaultOptions())
		ctx := context.Background()
		for _, svc := range []string{"", "retryd.v1.RetryService", "retryd.v1.AdminService"} {
			h, err := b.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			require.NoError(t, err)
			require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus(), "service %q", svc)
		}

		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "p", Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)
		// An unleased report while retryd holds the retry.
		_, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "p", Phase: "extraction", RetryCount: 1, ErrorType: "Timeout"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		// A lease that does not exist.
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "p", Phase: "extraction", RetryCount: 1, LeaseId: "nope"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		_, err = b.retry.ExtendLease(ctx, &retrydv1.ExtendLeaseRequest{JobId: "p", LeaseId: "nope"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		// Success of the original attempt conflicts with its recorded failure.
		_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "p", Phase: "extraction"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)

		// Cancel drops the scheduled retry; reports are refused afterwards.
		c, err := b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: "p", Reason: "operator says so"})
		require.NoError(t, err)
		require.Equal(t, retrydv1.JobState_JOB_STATE_CANCELED, c.GetJob().GetState())
		require.Nil(t, c.GetJob().GetNextAttemptAt())
		_, err = b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "p", Phase: "extraction", RetryCount: 2, ErrorType: "Timeout"})
		require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
		_, err = b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: "missing"})
		require.Equal(t, codes.NotFound, code(err), "%v", err)
		w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}})
		w.none(t, 2*scaled[0])
	})
}
