package main_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
)

func clients(t *testing.T, addr string) (retrydv1.RetryServiceClient, retrydv1.AdminServiceClient) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return retrydv1.NewRetryServiceClient(conn), retrydv1.NewAdminServiceClient(conn)
}

// TestKill9LosesNothing: retryd is killed with SIGKILL while it holds
// retries due soon, retries due later, and tasks leased to a worker that
// vanished. Started again on the same data, it dispatches every scheduled
// retry exactly once, and every leased one comes back after its lease. On
// Redis the Redis process stays up; on the embedded store the file is all
// that survives.
func TestKill9LosesNothing(t *testing.T) {
	for _, kind := range []string{"embedded", "redis"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			args := []string{"--data-dir", t.TempDir(), "--retry-delays", "100ms", "--jitter", "0"}
			if kind == "redis" {
				args = append(args, "--redis-url", testredis.Start(t).URL())
			}
			ctx := context.Background()
			first := start(t, nil, args...)
			retry, _ := clients(t, first.addr)
			report := func(group string, n int, after time.Duration) {
				for i := range n {
					req := &retrydv1.ReportFailureRequest{JobId: fmt.Sprintf("%s-%d", group, i), Phase: "extraction", ErrorType: "Timeout"}
					if after > 0 {
						req.RetryAfter = durationpb.New(after)
					}
					resp, err := retry.ReportFailure(ctx, req)
					require.NoError(t, err)
					require.Equal(t, retrydv1.Decision_DECISION_RETRY, resp.GetDecision())
				}
			}

			// Group "leased": due in 100 ms, taken by a worker that never reports.
			report("leased", 5, 0)
			sctx, cancel := context.WithCancel(ctx)
			stream, err := retry.Dispatch(sctx, &retrydv1.DispatchRequest{
				Phases: []string{"extraction"}, WorkerId: "doomed", MaxInFlight: 5, LeaseDuration: durationpb.New(time.Second),
			})
			require.NoError(t, err)
			for got := 0; got < 5; {
				msg, err := stream.Recv()
				require.NoError(t, err)
				if msg.GetTask() != nil {
					got++
				}
			}
			cancel()
			// Groups "soon" and "later": acknowledged, not yet due at the kill.
			report("soon", 15, 1500*time.Millisecond)
			report("later", 10, 3*time.Second)

			require.NoError(t, first.cmd.Process.Kill())
			<-first.done
			first.done <- nil

			second := start(t, nil, args...)
			retry, admin := clients(t, second.addr)
			stream, err = retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "survivor", MaxInFlight: 100})
			require.NoError(t, err)
			seen := map[string]uint32{}
			deadline := time.Now().Add(20 * time.Second)
			for len(seen) < 30 {
				require.True(t, time.Now().Before(deadline), "only %d of 30 jobs came back: %v", len(seen), seen)
				msg, err := stream.Recv()
				require.NoError(t, err)
				task := msg.GetTask()
				if task == nil {
					continue
				}
				_, dup := seen[task.GetJobId()]
				require.False(t, dup, "job %s dispatched twice", task.GetJobId())
				seen[task.GetJobId()] = task.GetRetryCount()
				_, err = retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
					JobId: task.GetJobId(), Phase: "extraction", RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
				})
				require.NoError(t, err)
			}
			for job, rc := range seen {
				want := uint32(1)
				if job[:6] == "leased" {
					want = 2 // the expired lease counted as failed attempt 1
				}
				require.Equal(t, want, rc, "job %s", job)
			}
			// Nothing more arrives, and every job is completed.
			list, err := admin.ListJobs(ctx, &retrydv1.ListJobsRequest{State: retrydv1.JobState_JOB_STATE_COMPLETED, PageSize: 100})
			require.NoError(t, err)
			require.Len(t, list.GetJobs(), 30)
			leased, err := admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "leased-0"})
			require.NoError(t, err)
			require.Equal(t, "LeaseExpired", leased.GetJob().GetAttempts()[1].GetErrorType())
			require.Equal(t, "doomed", leased.GetJob().GetAttempts()[1].GetWorkerId())
		})
	}
}
