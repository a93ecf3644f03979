package server_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// BenchmarkDispatchLag measures how late a due retry reaches a connected
// worker: the time from the task's due_at to its arrival at the client,
// through the real gRPC server, dispatcher and store. Each iteration reports
// a failure whose retry is due 2 ms later and waits for the task. It reports
// the lag's p50, p99 and max as custom metrics.
//
//	go test -run '^$' -bench DispatchLag -benchtime 500x ./server/
func BenchmarkDispatchLag(b *testing.B) {
	for _, kind := range []string{"redis", "bolt"} {
		b.Run(kind, func(b *testing.B) {
			opt := defaultOptions()
			opt.policy.Delays = []time.Duration{2 * time.Millisecond}
			bun := setup(b, kind, opt)
			ctx := context.Background()
			stream, err := bun.retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "bench", MaxInFlight: 8})
			if err != nil {
				b.Fatal(err)
			}
			lags := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				job := fmt.Sprintf("lag-%d", i)
				if _, err := bun.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: job, Phase: "extraction", ErrorType: "Timeout"}); err != nil {
					b.Fatal(err)
				}
				var task *retrydv1.Task
				for task == nil {
					msg, err := stream.Recv()
					if err != nil {
						b.Fatal(err)
					}
					task = msg.GetTask()
				}
				lags = append(lags, time.Since(task.GetDueAt().AsTime()))
				if _, err := bun.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
					JobId: job, Phase: "extraction", RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
				}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			slices.Sort(lags)
			q := func(p float64) float64 {
				return float64(lags[min(int(p*float64(len(lags))), len(lags)-1)].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.50), "lag-p50-ms")
			b.ReportMetric(q(0.99), "lag-p99-ms")
			b.ReportMetric(q(1), "lag-max-ms")
		})
	}
}
