package server

import (
	"context"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jonboulle/clockwork"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/metrics"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// recorder stands in for the store in FuzzRequests: it records what the
// handlers hand the store and succeeds. Any other store method is the nil
// embedded interface and panics, which the fuzzer reports.
type recorder struct {
	store.Store
	calls int
	last  any
}

func (r *recorder) record(v any) { r.calls++; r.last = v }

func (r *recorder) RecordFailure(_ context.Context, f store.Failure) (store.FailureResult, error) {
	r.record(f)
	return store.FailureResult{Verdict: f.Verdict}, nil
}

func (r *recorder) RecordSuccess(_ context.Context, s store.Success) (store.SuccessResult, error) {
	r.record(s)
	return store.SuccessResult{State: store.StateProcessing}, nil
}

func (r *recorder) ExtendLease(_ context.Context, jobID, leaseID string, until, _ time.Time) (time.Time, error) {
	r.record([2]string{jobID, leaseID})
	return until, nil
}

func (r *recorder) CancelJob(_ context.Context, jobID, reason string, now time.Time) (store.Job, error) {
	r.record(reason)
	return store.Job{ID: jobID, State: store.StateCanceled, CreatedAt: now, UpdatedAt: now}, nil
}

func (r *recorder) ListJobs(_ context.Context, q store.ListQuery) (store.JobPage, error) {
	r.record(q)
	return store.JobPage{}, nil
}

func (r *recorder) Stats(_ context.Context, q store.StatsQuery) ([]store.PhaseStats, error) {
	r.record(q)
	return nil, nil
}

// The documented limits (README.md, "Limits"), written out again here
// rather than taken from the validators, as the oracle the fuzzer checks
// every accepted request against.
var (
	docLabelKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_./-]*$`)
	docPhase    = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
)

func docPrintable(s string, lo, hi int) bool {
	if len(s) < lo || len(s) > hi {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

func docText(s string, hi int) bool { return len(s) <= hi && utf8.ValidString(s) }

func docPayload(t *testing.T, b []byte, maxBytes int) {
	t.Helper()
	if b == nil {
		return
	}
	if len(b) > maxBytes {
		t.Fatalf("accepted a payload of %d bytes, the limit is %d", len(b), maxBytes)
	}
	st := &structpb.Struct{}
	if err := proto.Unmarshal(b, st); err != nil {
		t.Fatalf("accepted a payload that does not decode: %v", err)
	}
	if d := depthOf(structpb.NewStructValue(st)); d > MaxPayloadDepth {
		t.Fatalf("accepted a payload nested %d deep", d)
	}
}

// depthOf is the nesting of objects and lists, counted plainly.
func depthOf(v *structpb.Value) int {
	d := 0
	switch k := v.GetKind().(type) {
	case *structpb.Value_StructValue:
		for _, f := range k.StructValue.GetFields() {
			d = max(d, depthOf(f))
		}
		return d + 1
	case *structpb.Value_ListValue:
		for _, f := range k.ListValue.GetValues() {
			d = max(d, depthOf(f))
		}
		return d + 1
	}
	return 0
}

func docLabels(t *testing.T, labels map[string]string) {
	t.Helper()
	if len(labels) > MaxLabels {
		t.Fatalf("accepted %d labels", len(labels))
	}
	for k, v := range labels {
		if len(k) > 128 || !docLabelKey.MatchString(k) || len(v) > 1024 {
			t.Fatalf("accepted label %q=%q", k, v)
		}
	}
}

func docDuration(d *durationpb.Duration, lo, hi time.Duration) bool {
	return d == nil || d.CheckValid() == nil && d.AsDuration() >= lo && d.AsDuration() <= hi
}

// requireRejected checks a refusal: INVALID_ARGUMENT with a BadRequest
// naming fields, and nothing asked of the store.
func requireRejected(t *testing.T, rpc string, err error, rec *recorder, callsBefore int) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("%s: got %v, want INVALID_ARGUMENT or success", rpc, err)
	}
	if !utf8.ValidString(st.Message()) || st.Message() == "" || len(st.Message()) > 64<<10 {
		t.Fatalf("%s: bad status message (%d bytes)", rpc, len(st.Message()))
	}
	details := st.Details()
	if len(details) != 1 {
		t.Fatalf("%s: %d details, want a BadRequest", rpc, len(details))
	}
	if br, ok := details[0].(*errdetails.BadRequest); !ok || len(br.GetFieldViolations()) == 0 || len(br.GetFieldViolations()) > maxViolations {
		t.Fatalf("%s: details %v", rpc, details[0])
	}
	if rec.calls != callsBefore {
		t.Fatalf("%s: a refused request reached the store", rpc)
	}
}

// FuzzRequests sends requests built from the fuzzer's values to the
// handlers of every RPC that takes free-form input (Dispatch through its
// validation). Each either is refused with INVALID_ARGUMENT listing the bad
// fields and reaches no store, or reaches the store with every field
// within the documented limits; nothing panics.
func FuzzRequests(f *testing.F) {
	f.Add("job-1", "extraction", "requests.exceptions.ConnectionError", "connection refused", "", "source_name", "report.pdf",
		"w1", uint32(0), uint32(0), int64(0), int32(0), []byte(nil), uint8(0), uint8(0), "extraction,chunking", uint32(0), "")
	f.Add("x');redis.call('FLUSHALL');--", "kg_ingest", "ValidationError", "'; DROP TABLE pipeline_job; --", "lease-1", "a/b.c", "]] .. KEYS[1] .. [[",
		"host:1234", uint32(503), uint32(3), int64(60), int32(0), []byte{0x0a, 0x00}, uint8(3), uint8(5), "a,b,a", uint32(1000), "AAAA")
	f.Add("", "Extraction", "two words", "\r\n*1\r\n$8\r\nFLUSHALL\r\n", "a b", "bad key", strings.Repeat("v", 1025),
		"w\x1b[31m", uint32(42), uint32(10001), int64(-1), int32(-5), []byte("\xff\xff"), uint8(MaxPayloadDepth), uint8(70), "", uint32(1001), strings.Repeat("t", 1025))
	f.Add(strings.Repeat("j", 257), strings.Repeat("p", 65), "\u00e9", "\xff", strings.Repeat("l", 129), strings.Repeat("k", 129), "",
		strings.Repeat("w", 257), uint32(600), uint32(1), int64(8*24*3600), int32(999999999), []byte{}, uint8(MaxPayloadDepth+1), uint8(63), strings.Repeat("p,", 40), uint32(10001), "")

	rec := &recorder{}
	policy, err := scheduler.NewPolicy(scheduler.DefaultPolicyConfig(), nil)
	if err != nil {
		f.Fatal(err)
	}
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: rec})
	if err != nil {
		f.Fatal(err)
	}
	const maxPayload = 2048
	d := &deps{
		store: rec, policy: policy, dispatcher: disp, metrics: metrics.New(),
		clock: clockwork.NewFakeClockAt(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)), leaseDuration: time.Minute, heartbeat: time.Second,
		maxPayload: maxPayload,
	}
	retry, admin := &retryService{deps: d}, &adminService{deps: d}
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, jobID, phase, errorType, message, leaseID, labelKey, labelValue, workerID string,
		httpStatus, retryCount uint32, seconds int64, nanos int32, payloadBytes []byte, nest, extraLabels uint8,
		phases string, size uint32, token string) {
		var payload *structpb.Struct
		if payloadBytes != nil {
			payload = &structpb.Struct{}
			if proto.Unmarshal(payloadBytes, payload) != nil {
				payload = &structpb.Struct{}
			}
			for range nest {
				payload = &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewStructValue(payload)}}
			}
		}
		labels := map[string]string{labelKey: labelValue}
		for i := range int(extraLabels) {
			labels["l"+string(rune('a'+i%26))+strings.Repeat("x", i/26)] = "v"
		}
		dur := &durationpb.Duration{Seconds: seconds, Nanos: nanos}
		started := &timestamppb.Timestamp{Seconds: seconds * 1000, Nanos: nanos}

		// ReportFailure.
		n := rec.calls
		_, err := retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: jobID, Phase: phase, RetryCount: retryCount, ErrorType: errorType, ErrorMessage: message,
			HttpStatus: httpStatus, Payload: payload, Labels: labels, RetryAfter: dur, LeaseId: leaseID, StartedAt: started,
		})
		if err != nil {
			requireRejected(t, "ReportFailure", err, rec, n)
		} else {
			f := rec.last.(store.Failure)
			if !docPrintable(f.JobID, 1, 256) || !docPhase.MatchString(f.Phase) || f.RetryCount > 10000 ||
				!docPrintable(f.ErrorType, 1, 256) || !docText(f.ErrorMessage, 64<<10) ||
				f.HTTPStatus != 0 && (f.HTTPStatus < 100 || f.HTTPStatus > 599) || !docPrintable(f.LeaseID, 0, 128) ||
				!docDuration(dur, 0, 7*24*time.Hour) || started.CheckValid() != nil {
				t.Fatalf("ReportFailure accepted %+v (retry_after %v, started_at %v)", f, dur, started)
			}
			docLabels(t, f.Labels)
			docPayload(t, f.Payload, maxPayload)
		}

		// ReportSuccess, with the error type as the next phase.
		n = rec.calls
		_, err = retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
			JobId: jobID, Phase: phase, RetryCount: retryCount, LeaseId: leaseID, NextPhase: errorType,
			Output: payload, NextPayload: payload, Payload: payload, Labels: labels, StartedAt: started,
		})
		if err != nil {
			requireRejected(t, "ReportSuccess", err, rec, n)
		} else {
			s := rec.last.(store.Success)
			if !docPrintable(s.JobID, 1, 256) || !docPhase.MatchString(s.Phase) || s.RetryCount > 10000 ||
				s.NextPhase != "" && !docPhase.MatchString(s.NextPhase) || !docPrintable(s.LeaseID, 0, 128) ||
				s.NextPayload != nil && s.NextPhase == "" {
				t.Fatalf("ReportSuccess accepted %+v", s)
			}
			docLabels(t, s.Labels)
			docPayload(t, s.Payload, maxPayload)
			docPayload(t, s.Output, maxPayload)
			docPayload(t, s.NextPayload, maxPayload)
		}

		// ExtendLease.
		n = rec.calls
		_, err = retry.ExtendLease(ctx, &retrydv1.ExtendLeaseRequest{JobId: jobID, LeaseId: leaseID, ExtendBy: dur})
		if err != nil {
			requireRejected(t, "ExtendLease", err, rec, n)
		} else if !docPrintable(jobID, 1, 256) || !docPrintable(leaseID, 1, 128) || !docDuration(dur, 0, 24*time.Hour) {
			t.Fatalf("ExtendLease accepted job %q lease %q extend_by %v", jobID, leaseID, dur)
		}

		// Dispatch's validation (the stream itself needs a connection).
		var ps []string
		if phases != "" {
			ps = strings.Split(phases, ",")
		}
		dreq := &retrydv1.DispatchRequest{Phases: ps, WorkerId: workerID, MaxInFlight: size, LeaseDuration: dur}
		if err := checkDispatch(dreq); err != nil {
			requireRejected(t, "Dispatch", err, rec, rec.calls)
		} else {
			seen := map[string]bool{}
			for _, p := range ps {
				if !docPhase.MatchString(p) || seen[p] {
					t.Fatalf("Dispatch accepted phases %q", ps)
				}
				seen[p] = true
			}
			if len(ps) == 0 || len(ps) > 32 || size > 10000 || len(workerID) > 256 || !utf8.ValidString(workerID) ||
				strings.ContainsFunc(workerID, unicode.IsControl) || !docDuration(dur, time.Millisecond, 24*time.Hour) {
				t.Fatalf("Dispatch accepted %v", dreq)
			}
		}

		// CancelJob, with the message as the reason.
		n = rec.calls
		_, err = admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: jobID, Reason: message})
		if err != nil {
			requireRejected(t, "CancelJob", err, rec, n)
		} else if !docPrintable(jobID, 1, 256) || !docText(message, 4096) {
			t.Fatalf("CancelJob accepted job %q with a reason of %d bytes", jobID, len(message))
		}

		// ListJobs.
		n = rec.calls
		state := retrydv1.JobState(int32(retryCount % 7))
		_, err = admin.ListJobs(ctx, &retrydv1.ListJobsRequest{State: state, Phase: phase, InBackoff: nest%2 == 1, PageSize: size, PageToken: token})
		if err != nil {
			requireRejected(t, "ListJobs", err, rec, n)
		} else {
			q := rec.last.(store.ListQuery)
			if state > retrydv1.JobState_JOB_STATE_CANCELED || q.Phase != "" && !docPhase.MatchString(q.Phase) ||
				q.Limit < 1 || q.Limit > 1000 || len(q.Cursor) > 1024 {
				t.Fatalf("ListJobs accepted %+v (state %v)", q, state)
			}
		}

		// GetRetryStats.
		n = rec.calls
		_, err = admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{Window: dur, Phase: phase})
		if err != nil {
			requireRejected(t, "GetRetryStats", err, rec, n)
		} else if !docDuration(dur, time.Hour, 90*24*time.Hour) || phase != "" && !docPhase.MatchString(phase) {
			t.Fatalf("GetRetryStats accepted window %v phase %q", dur, phase)
		}
	})
}
