package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
)

// logUnaryCalls is go-grpc-middleware's logging interceptor for unary
// calls, run only for the calls it logs. That interceptor builds its
// fields (a dozen strings, the peer address, the start time formatted) for
// every call before it learns the call's code; for a successful call the
// line then goes out at debug level, which is normally off. At thousands of
// reports a second that was about a fifth of the server's allocations (see
// BENCHMARKS.md). So unless debug is enabled, a call runs without it, and
// only a failed call is handed to it afterwards, with its real start time
// (callStart, read back by callStartFields) so that grpc.start_time and
// grpc.time_ms are the call's own.
func logUnaryCalls(log *slog.Logger, inner grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if log.Enabled(ctx, slog.LevelDebug) {
			return inner(ctx, req, info, handler)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		done := func(context.Context, any) (any, error) { return resp, err }
		return inner(context.WithValue(ctx, callStart{}, start), req, info, done)
	}
}

// callStart is the context key of a call's start time, for a call that
// reaches the logging interceptor after it ran.
type callStart struct{}

// callStartFields overrides the logging interceptor's start time and
// duration for a call that ran before it was handed over (logUnaryCalls);
// other calls keep the interceptor's own.
func callStartFields(ctx context.Context, _ interceptors.CallMeta) logging.Fields {
	start, ok := ctx.Value(callStart{}).(time.Time)
	if !ok {
		return nil
	}
	// The formats of logging.DurationToTimeMillisFields and of the
	// interceptor's default timestamp format (RFC 3339).
	ms := float32(time.Since(start).Nanoseconds()/1000) / 1000
	return logging.Fields{"grpc.start_time", start.Format(time.RFC3339), "grpc.time_ms", fmt.Sprintf("%v", ms)}
}
