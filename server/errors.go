package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/retryd/retryd/store"
)

// storeError maps a store error to a gRPC status. It is the only place that
// does: known sentinels keep their message (it names the job, lease or
// state, never a secret); anything else is logged and shown to the client
// as a generic internal error.
func storeError(ctx context.Context, log *slog.Logger, op string, err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrLeaseNotHeld),
		errors.Is(err, store.ErrLeaseActive),
		errors.Is(err, store.ErrConflict),
		errors.Is(err, store.ErrJobTerminal),
		errors.Is(err, store.ErrAttemptPending),
		errors.Is(err, store.ErrJobNotFailed),
		errors.Is(err, store.ErrUnknownPhase):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrUnavailable):
		log.WarnContext(ctx, "store unavailable", "op", op, "err", err)
		return status.Error(codes.Unavailable, "the store is unavailable: the call was not acknowledged; retry it (reports are idempotent)")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the deadline expired before the store answered")
	default:
		log.ErrorContext(ctx, "store error", "op", op, "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	return status.Error(code, err.Error())
}
