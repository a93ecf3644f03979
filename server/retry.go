package server

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// retryService implements retrydv1.RetryServiceServer: validate, decide,
// apply, answer. It holds no storage logic.
type retryService struct {
	retrydv1.UnimplementedRetryServiceServer
	*deps
}

func (s *retryService) ReportFailure(ctx context.Context, req *retrydv1.ReportFailureRequest) (*retrydv1.ReportFailureResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	v.phase("phase", req.GetPhase(), true)
	v.retryCount("retry_count", req.GetRetryCount())
	switch et := req.GetErrorType(); {
	case et == "":
		v.add("error_type", "is required (the exception's class name)")
	case len(et) > MaxErrorTypeBytes:
		v.add("error_type", "is %d bytes, the limit is %d", len(et), MaxErrorTypeBytes)
	case !printable(et):
		v.add("error_type", "must be printable ASCII without spaces")
	}
	v.text("error_message", req.GetErrorMessage(), MaxErrorMessageBytes)
	if hs := req.GetHttpStatus(); hs != 0 && (hs < 100 || hs > 599) {
		v.add("http_status", "is %d, it must be 0 (none) or 100 to 599", hs)
	}
	v.labels("labels", req.GetLabels())
	v.duration("retry_after", req.GetRetryAfter(), 0, MaxRetryAfter)
	v.leaseID("lease_id", req.GetLeaseId())
	v.timestamp("started_at", req.GetStartedAt())
	payload := s.payload(&v, "payload", req.GetPayload())
	if err := v.err(); err != nil {
		return nil, err
	}

	now := s.clock.Now()
	verdict := s.policy.Decide(scheduler.Report{
		Phase:      req.GetPhase(),
		RetryCount: req.GetRetryCount(),
		ErrorType:  req.GetErrorType(),
		HTTPStatus: req.GetHttpStatus(),
		RetryAfter: req.GetRetryAfter().AsDuration(),
	}, now)
	res, err := s.store.RecordFailure(ctx, store.Failure{
		JobID:        req.GetJobId(),
		Phase:        req.GetPhase(),
		RetryCount:   req.GetRetryCount(),
		LeaseID:      req.GetLeaseId(),
		ErrorType:    req.GetErrorType(),
		ErrorMessage: req.GetErrorMessage(),
		HTTPStatus:   req.GetHttpStatus(),
		Payload:      payload,
		Labels:       labelsOrNil(req.GetLabels()),
		StartedAt:    tsOrZero(req.GetStartedAt()),
		Now:          now,
		Verdict:      verdict,
	})
	if err != nil {
		return nil, storeError(ctx, s.log, "ReportFailure", err)
	}
	if !res.Duplicate {
		s.metrics.Decided(req.GetPhase(), req.GetErrorType(), res.Verdict.Decision)
		if req.GetLeaseId() != "" {
			s.dispatcher.LeaseReleased(req.GetLeaseId())
		}
	}
	return verdictToResponse(res.Verdict), nil
}

func (s *retryService) ReportSuccess(ctx context.Context, req *retrydv1.ReportSuccessRequest) (*retrydv1.ReportSuccessResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	v.phase("phase", req.GetPhase(), true)
	v.retryCount("retry_count", req.GetRetryCount())
	v.leaseID("lease_id", req.GetLeaseId())
	v.phase("next_phase", req.GetNextPhase(), false)
	v.labels("labels", req.GetLabels())
	v.timestamp("started_at", req.GetStartedAt())
	output := s.payload(&v, "output", req.GetOutput())
	nextPayload := s.payload(&v, "next_payload", req.GetNextPayload())
	payload := s.payload(&v, "payload", req.GetPayload())
	if req.GetNextPayload() != nil && req.GetNextPhase() == "" {
		v.add("next_payload", "is only meaningful with next_phase")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	res, err := s.store.RecordSuccess(ctx, store.Success{
		JobID:       req.GetJobId(),
		Phase:       req.GetPhase(),
		RetryCount:  req.GetRetryCount(),
		LeaseID:     req.GetLeaseId(),
		NextPhase:   req.GetNextPhase(),
		NextPayload: nextPayload,
		Output:      output,
		Payload:     payload,
		Labels:      labelsOrNil(req.GetLabels()),
		StartedAt:   tsOrZero(req.GetStartedAt()),
		Now:         s.clock.Now(),
	})
	if err != nil {
		return nil, storeError(ctx, s.log, "ReportSuccess", err)
	}
	if !res.Duplicate {
		s.metrics.Succeeded(req.GetPhase(), req.GetRetryCount())
		if req.GetLeaseId() != "" {
			s.dispatcher.LeaseReleased(req.GetLeaseId())
		}
	}
	return &retrydv1.ReportSuccessResponse{State: stateToProto(res.State)}, nil
}

func (s *retryService) ExtendLease(ctx context.Context, req *retrydv1.ExtendLeaseRequest) (*retrydv1.ExtendLeaseResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	if req.GetLeaseId() == "" {
		v.add("lease_id", "is required")
	} else {
		v.leaseID("lease_id", req.GetLeaseId())
	}
	v.duration("extend_by", req.GetExtendBy(), 0, MaxLeaseDuration)
	if err := v.err(); err != nil {
		return nil, err
	}
	by := req.GetExtendBy().AsDuration()
	if by == 0 {
		by = s.leaseDuration
	}
	now := s.clock.Now()
	until, err := s.store.ExtendLease(ctx, req.GetJobId(), req.GetLeaseId(), now.Add(by), now)
	if err != nil {
		return nil, storeError(ctx, s.log, "ExtendLease", err)
	}
	return &retrydv1.ExtendLeaseResponse{LeaseExpiresAt: timestamppb.New(until)}, nil
}

// Dispatch subscribes the stream to the dispatcher and forwards its tasks,
// with a heartbeat whenever the stream has been idle for a heartbeat
// interval (see feed). A task that cannot be sent goes back to the schedule
// at once.
func (s *retryService) Dispatch(req *retrydv1.DispatchRequest, stream retrydv1.RetryService_DispatchServer) error {
	if err := checkDispatch(req); err != nil {
		return err
	}

	sub, err := s.dispatcher.Subscribe(scheduler.SubscribeRequest{
		Phases:      req.GetPhases(),
		WorkerID:    req.GetWorkerId(),
		MaxInFlight: int(req.GetMaxInFlight()),
		LeaseFor:    req.GetLeaseDuration().AsDuration(),
	})
	if err != nil {
		return status.Error(codes.Unavailable, "retryd is shutting down; reconnect to another replica")
	}
	defer sub.Close()
	ctx := stream.Context()
	s.log.DebugContext(ctx, "dispatch stream opened", "worker_id", req.GetWorkerId(), "phases", req.GetPhases())

	return s.feed(ctx, stream, sub)
}

func (s *retryService) send(ctx context.Context, stream retrydv1.RetryService_DispatchServer, sub *scheduler.Subscription, t store.Task) error {
	pt, err := taskToProto(t)
	if err != nil {
		// Putting it back would hand it to the next stream, and the next:
		// a poison task. It fails for good instead, where operators see it.
		s.giveUpUndecodable(ctx, sub, t, err)
		return nil
	}
	// A task claimed ahead of its due time is held until then.
	if err := sub.AwaitDue(ctx, t); err != nil {
		sub.Unsent(t)
		return err
	}
	if err := stream.Send(&retrydv1.DispatchResponse{Kind: &retrydv1.DispatchResponse_Task{Task: pt}}); err != nil {
		sub.Unsent(t)
		return err
	}
	s.metrics.Sent(t.Phase, t.DueAt, s.clock.Now())
	s.log.DebugContext(ctx, "task sent", slog.String("job_id", t.JobID), slog.String("phase", t.Phase),
		slog.Uint64("retry_count", uint64(t.RetryCount)), slog.Duration("lag", s.clock.Since(t.DueAt)))
	scheduler.Fault(scheduler.FaultAfterSend) // a no-op but in the fault tests' build
	return nil
}

// UndecodablePayloadType is the error type of an attempt retryd gave up
// because its stored payload no longer decodes (a store bug or corruption).
const UndecodablePayloadType = "UndecodablePayload"

// giveUpUndecodable records a leased task whose stored payload does not
// decode as a failed attempt and fails the job, so that the stream (and
// every other stream of the phase) goes on; an operator can cancel it or,
// once the payload is repaired, re-drive it with RetryJob.
func (s *retryService) giveUpUndecodable(ctx context.Context, sub *scheduler.Subscription, t store.Task, cause error) {
	s.log.ErrorContext(ctx, "stored payload does not decode: the job is failed instead of dispatched",
		"job_id", t.JobID, "phase", t.Phase, "retry_count", t.RetryCount, "err", cause)
	_, err := s.store.RecordFailure(ctx, store.Failure{
		JobID:        t.JobID,
		Phase:        t.Phase,
		RetryCount:   t.RetryCount,
		LeaseID:      t.LeaseID,
		ErrorType:    UndecodablePayloadType,
		ErrorMessage: "retryd could not decode the stored payload of this attempt: " + cause.Error(),
		Payload:      []byte{},
		Now:          s.clock.Now(),
		Verdict: store.Verdict{
			Decision: store.DecisionGiveUp,
			Reason:   "not dispatched: the stored payload does not decode (retryd gave up so that the task cannot stall every worker)",
		},
	})
	if err != nil {
		// The lease stays; when it expires the reaper records the attempt
		// and the task comes round again, to this same path.
		s.log.ErrorContext(ctx, "recording an undecodable task failed", "job_id", t.JobID, "err", err)
		return
	}
	s.dispatcher.LeaseReleased(t.LeaseID)
}

// payload encodes an optional Struct and checks it against the size limit.
func (d *deps) payload(v *violations, field string, st *structpb.Struct) []byte {
	b, err := encodeStruct(st)
	if err != nil {
		v.add(field, "does not encode: %v", err)
		return nil
	}
	if len(b) > d.maxPayload {
		v.add(field, "is %d bytes encoded, the limit is %d (--max-payload-bytes)", len(b), d.maxPayload)
		return nil
	}
	if depth := structDepth(st, MaxPayloadDepth+1); depth > MaxPayloadDepth {
		v.add(field, "nests objects and lists more than %d deep", MaxPayloadDepth)
		return nil
	}
	return b
}

// labelsOrNil keeps "no labels sent" distinct from "replace with these".
func labelsOrNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
