package server_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/scheduler"
)

// expiredBy counts the LeaseExpired attempts of the jobs that name worker.
func expiredBy(t *testing.T, b *bundle, jobs []string, worker string) int {
	t.Helper()
	n := 0
	for _, id := range jobs {
		got, err := b.admin.GetJob(context.Background(), &retrydv1.GetJobRequest{JobId: id})
		require.NoError(t, err)
		for _, a := range got.GetJob().GetAttempts() {
			if a.GetErrorType() == scheduler.LeaseExpiredType && a.GetWorkerId() == worker {
				n++
			}
		}
	}
	return n
}

// TestStalledReaderBlocksNothing: a worker that opens a Dispatch stream and
// never reads it fills its flow-control window, and from then on every Send
// to it would block. That blocks neither the dispatcher nor the other
// streams: jobs reported meanwhile all reach the reading workers, the tasks
// the stalled stream was sent come back after their lease as LeaseExpired
// attempts and are retried elsewhere, and the server ends the stalled
// stream once a message has been blocked for half its lease.
//
// Before the fix, the stalled stream's task channel filled with tasks whose
// leases had expired, the dispatcher blocked while delivering to it, and
// with it every stream and every report that released a lease.
func TestStalledReaderBlocksNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		opt := defaultOptions()
		opt.policy.MaxRetries = scheduler.MaxRetriesLimit // no job gives up however often it lands on the stalled stream
		opt.policy.Delays = []time.Duration{5 * time.Millisecond}
		b := setup(t, kind, opt)
		ctx := context.Background()
		// 100 KB payloads: the second unread task already exhausts the
		// stalled client's 64 KiB window plus the server's 64 KiB write
		// quota, so the third Send blocks.
		payload := mustStruct(t, map[string]any{"blob": strings.Repeat("p", 100<<10)})
		report := func(id string) {
			_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
				JobId: id, Phase: "extraction", ErrorType: "Timeout", Payload: payload,
			})
			require.NoError(t, err)
		}

		// A fixed 64 KiB window (setting it turns off the window's growth),
		// and a stream nobody reads.
		conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stalled, err := retrydv1.NewRetryServiceClient(conn).Dispatch(sctx, &retrydv1.DispatchRequest{
			Phases: []string{"extraction"}, WorkerId: "stalled", MaxInFlight: 2,
			LeaseDuration: durationpb.New(300 * time.Millisecond),
		})
		require.NoError(t, err)

		// Alone, the stalled stream takes two tasks, which expire; the next
		// Send to it blocks.
		var jobs []string
		for i := range 6 {
			jobs = append(jobs, fmt.Sprintf("early-%d", i))
			report(jobs[i])
		}
		require.Eventually(t, func() bool { return expiredBy(t, b, jobs, "stalled") >= 2 }, 20*time.Second, 20*time.Millisecond,
			"the stalled stream should have been sent tasks that expired")

		// Reading workers join and more jobs arrive while it stays stalled.
		w1 := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w1", MaxInFlight: 2})
		w2 := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w2", MaxInFlight: 2})
		for i := range 20 {
			id := fmt.Sprintf("late-%d", i)
			jobs = append(jobs, id)
			report(id)
		}
		completed := map[string]bool{}
		deadline := time.After(30 * time.Second)
		for len(completed) < len(jobs) {
			var r received
			select {
			case r = <-w1.C:
			case r = <-w2.C:
			case <-deadline:
				t.Fatalf("only %d of %d jobs completed: the stalled stream blocked the others", len(completed), len(jobs))
			}
			task := r.task
			// A deadline: a blocked dispatcher blocks reports that release a lease.
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := b.retry.ReportSuccess(rctx, &retrydv1.ReportSuccessRequest{
				JobId: task.GetJobId(), Phase: task.GetPhase(), RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
			})
			cancel()
			require.NoError(t, err)
			require.False(t, completed[task.GetJobId()], "job %s delivered after it completed", task.GetJobId())
			completed[task.GetJobId()] = true
		}
		for _, id := range jobs {
			got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
			require.NoError(t, err)
			require.Equal(t, retrydv1.JobState_JOB_STATE_COMPLETED, got.GetJob().GetState(), "job %s", id)
		}
		require.GreaterOrEqual(t, expiredBy(t, b, jobs, "stalled"), 2)

		// The server ended the stalled stream: reading it now yields what
		// was buffered, then the reason.
		for {
			_, err := stalled.Recv()
			if err != nil {
				require.Equal(t, codes.ResourceExhausted, code(err), "%v", err)
				require.Contains(t, err.Error(), "not reading its Dispatch stream")
				break
			}
		}
	})
}

// silentConn opens an HTTP/2 connection to addr that completes the
// handshake and then never reads: it acknowledges no ping, as an idle
// grpc-python channel does between the polls of its backup poller.
func silentConn(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	require.NoError(t, http2.NewFramer(c, c).WriteSettings())
}

// TestShutdownDoesNotWaitForSilentPeers: with an idle connection whose
// client never answers the GOAWAY ping, and a Dispatch stream whose worker
// does not read (its trailers wait behind a full flow-control window),
// Shutdown still returns at once after the last call ends, not after
// grpc-go's 5-second drain timer or the grace period. Of the stalled
// stream's tasks, the two that were sent stay leased to it, the one whose
// Send was blocked went back to the schedule, and the job it never took
// stays scheduled.
func TestShutdownDoesNotWaitForSilentPeers(t *testing.T) {
	b := setup(t, "bolt", defaultOptions())
	ctx := context.Background()
	payload := mustStruct(t, map[string]any{"blob": strings.Repeat("p", 100<<10)})
	jobs := []string{"s-0", "s-1", "s-2", "s-3"}
	for _, id := range jobs {
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: id, Phase: "extraction", ErrorType: "Timeout", Payload: payload})
		require.NoError(t, err)
	}
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err = retrydv1.NewRetryServiceClient(conn).Dispatch(sctx, &retrydv1.DispatchRequest{
		Phases: []string{"extraction"}, WorkerId: "stalled", MaxInFlight: 3, LeaseDuration: durationpb.New(time.Minute),
	})
	require.NoError(t, err)
	leased := func() (n int) {
		for _, id := range jobs {
			j, err := b.store.GetJob(ctx, id)
			require.NoError(t, err)
			if j.LeaseID != "" {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return leased() == 3 }, 10*time.Second, 10*time.Millisecond)
	silentConn(t, b.addr)

	began := time.Now()
	b.disp.Stop()
	sd, cancelGrace := context.WithTimeout(ctx, 20*time.Second)
	defer cancelGrace()
	b.srv.Shutdown(sd)
	took := time.Since(began)
	t.Logf("Shutdown took %v", took)
	require.Less(t, took, 3*time.Second, "Shutdown waited for silent peers")

	// How many Sends completed before the window filled depends on how far
	// the sender got under load (one or two); the one blocked went back.
	n := leased()
	require.True(t, n == 1 || n == 2, "the tasks sent stay leased, the blocked one went back: %d leased", n)
	for _, id := range jobs {
		j, err := b.store.GetJob(ctx, id)
		require.NoError(t, err)
		require.NotEmpty(t, j.PendingPhase, "job %s has its attempt pending, leased or scheduled", id)
		require.Empty(t, j.Attempts[1:], "job %s: no attempt was recorded for the stream", id)
	}
}

// TestEndedStreamKeepsItsCode: a Dispatch stream whose worker's deadline
// passes, or whose worker cancels it, ends with DEADLINE_EXCEEDED or
// CANCELLED on the server too. The server's copy of the deadline can fire
// before the worker's own; had the handler returned OK, the worker would
// have read a clean end of stream (grpcurl -max-time printed nothing).
func TestEndedStreamKeepsItsCode(t *testing.T) {
	ended := make(chan error, 2)
	record := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		if strings.HasSuffix(info.FullMethod, "/Dispatch") {
			ended <- err
		}
		return err
	}
	opt := defaultOptions()
	opt.grpcOpts = []grpc.ServerOption{grpc.ChainStreamInterceptor(record)}
	b := setup(t, "bolt", opt)
	req := &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w"}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stream, err := b.retry.Dispatch(ctx, req)
	require.NoError(t, err)
	_, err = stream.Recv()
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))
	select {
	case err := <-ended:
		// CANCELLED when the worker's deadline fired first: its RST_STREAM
		// cancels the server's context.
		require.Contains(t, []codes.Code{codes.DeadlineExceeded, codes.Canceled}, status.Code(err), "handler returned %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the Dispatch handler did not return")
	}

	ctx, cancel = context.WithCancel(context.Background())
	stream, err = b.retry.Dispatch(ctx, req)
	require.NoError(t, err)
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = stream.Recv()
	require.Equal(t, codes.Canceled, status.Code(err))
	select {
	case err := <-ended:
		require.Equal(t, codes.Canceled, status.Code(err), "handler returned %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the Dispatch handler did not return")
	}
}
