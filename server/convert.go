package server

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/store"
)

// encodeStruct turns a Struct into the opaque bytes the store keeps; nil
// stays nil ("keep what is stored"). Deterministic so that equal payloads
// are equal bytes.
func encodeStruct(s *structpb.Struct) ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{} // an empty Struct is a payload, not "keep the stored one"
	}
	return b, nil
}

// decodeStruct is the inverse of encodeStruct. Bytes the store holds were
// encoded by encodeStruct, so an error means corruption.
func decodeStruct(b []byte) (*structpb.Struct, error) {
	if b == nil {
		return nil, nil
	}
	s := &structpb.Struct{}
	if err := proto.Unmarshal(b, s); err != nil {
		return nil, err
	}
	return s, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tsOrZero(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func decisionToProto(d store.Decision) retrydv1.Decision {
	switch d {
	case store.DecisionRetry:
		return retrydv1.Decision_DECISION_RETRY
	case store.DecisionGiveUp:
		return retrydv1.Decision_DECISION_GIVE_UP
	}
	return retrydv1.Decision_DECISION_UNSPECIFIED
}

// The store's enums use the proto numbers, so conversion is a cast that the
// tests pin down.
func stateToProto(s store.JobState) retrydv1.JobState { return retrydv1.JobState(s) }

func stateFromProto(s retrydv1.JobState) store.JobState { return store.JobState(s) }

func attemptStatusToProto(s store.AttemptStatus) retrydv1.AttemptStatus {
	return retrydv1.AttemptStatus(s)
}

func verdictToResponse(v store.Verdict) *retrydv1.ReportFailureResponse {
	resp := &retrydv1.ReportFailureResponse{
		Decision:  decisionToProto(v.Decision),
		Retryable: v.Retryable,
		Reason:    v.Reason,
	}
	if v.Decision == store.DecisionRetry {
		resp.NextRetryCount = v.NextRetryCount
		resp.Delay = durationpb.New(v.Delay)
		resp.NextAttemptAt = ts(v.DueAt)
	}
	return resp
}

// jobToProto converts a job with its history. An attempt whose stored
// payload or output does not decode is still shown, without them, and the
// returned error says which: an operator inspecting a damaged job needs to
// see it more than ever.
func jobToProto(j store.Job) (*retrydv1.Job, error) {
	out := &retrydv1.Job{
		JobId:             j.ID,
		State:             stateToProto(j.State),
		CurrentPhase:      j.Phase,
		Labels:            j.Labels,
		FinalError:        j.FinalError,
		FinalErrorType:    j.FinalErrorType,
		TotalRetries:      j.TotalRetries,
		Cycle:             j.Cycle,
		LeaseId:           j.LeaseID,
		LeaseExpiresAt:    ts(j.LeaseExpiresAt),
		WorkerId:          j.WorkerID,
		CreatedAt:         ts(j.CreatedAt),
		UpdatedAt:         ts(j.UpdatedAt),
		PendingRetryCount: j.PendingRetryCount,
	}
	if j.InBackoff() {
		out.NextAttemptAt = ts(j.DueAt)
	}
	var errs []error
	for i, a := range j.Attempts {
		pa, err := attemptToProto(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("attempt %d (%s #%d): %w", i, a.Phase, a.RetryCount, err))
		}
		out.Attempts = append(out.Attempts, pa)
	}
	return out, errors.Join(errs...)
}

// attemptToProto converts an attempt; a payload or output that does not
// decode is left out and reported.
func attemptToProto(a store.Attempt) (*retrydv1.Attempt, error) {
	payload, perr := decodeStruct(a.Payload)
	if perr != nil {
		perr = fmt.Errorf("payload: %w", perr)
	}
	output, oerr := decodeStruct(a.Output)
	if oerr != nil {
		oerr = fmt.Errorf("output: %w", oerr)
	}
	out := &retrydv1.Attempt{
		Phase:        a.Phase,
		RetryCount:   a.RetryCount,
		Status:       attemptStatusToProto(a.Status),
		ErrorType:    a.ErrorType,
		ErrorMessage: a.ErrorMessage,
		HttpStatus:   a.HTTPStatus,
		Payload:      payload,
		Output:       output,
		StartedAt:    ts(a.StartedAt),
		FinishedAt:   ts(a.FinishedAt),
		Cycle:        a.Cycle,
		WorkerId:     a.WorkerID,
	}
	if a.Status == store.AttemptFailed {
		out.Decision = decisionToProto(a.Verdict.Decision)
		out.Reason = a.Verdict.Reason
		if a.Verdict.Decision == store.DecisionRetry {
			out.Delay = durationpb.New(a.Verdict.Delay)
		}
	}
	return out, errors.Join(perr, oerr)
}

func summaryToProto(j store.Job, now time.Time) *retrydv1.JobSummary {
	out := &retrydv1.JobSummary{
		JobId:         j.ID,
		State:         stateToProto(j.State),
		CurrentPhase:  j.Phase,
		RetryCount:    j.LastFailedRetryCount,
		FailedAt:      ts(j.LastFailedAt),
		Labels:        j.Labels,
		LastErrorType: j.LastErrorType,
		LastError:     j.LastError,
		UpdatedAt:     ts(j.UpdatedAt),
	}
	if !j.LastFailedAt.IsZero() {
		out.SecondsSinceFailure = now.Sub(j.LastFailedAt).Seconds()
	}
	if j.InBackoff() {
		out.NextAttemptAt = ts(j.DueAt)
	}
	return out
}

func taskToProto(t store.Task) (*retrydv1.Task, error) {
	payload, err := decodeStruct(t.Payload)
	if err != nil {
		return nil, err
	}
	return &retrydv1.Task{
		JobId:          t.JobID,
		Phase:          t.Phase,
		RetryCount:     t.RetryCount,
		Payload:        payload,
		Labels:         t.Labels,
		LeaseId:        t.LeaseID,
		LeaseExpiresAt: ts(t.LeaseExpiresAt),
		DueAt:          ts(t.DueAt),
		Cycle:          t.Cycle,
	}, nil
}
