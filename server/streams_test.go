package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// TestConcurrentStreamsBounded: a connection holds at most
// MaxConcurrentStreams calls at once; a further call waits in the client
// (here until its deadline) and goes through once a stream ends. A client
// that leaks Dispatch streams cannot grow the server without end.
func TestConcurrentStreamsBounded(t *testing.T) {
	t.Parallel()
	opt := defaultOptions()
	opt.streams = 2
	b := setup(t, "bolt", opt)
	ctx := context.Background()
	open := func() (retrydv1.RetryService_DispatchClient, context.CancelFunc) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		st, err := b.retry.Dispatch(sctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w"})
		require.NoError(t, err)
		_, err = st.Header() // the server took the stream
		require.NoError(t, err)
		return st, cancel
	}
	_, cancel1 := open()
	_, cancel2 := open()
	defer cancel2()

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := b.admin.GetJob(short, &retrydv1.GetJobRequest{JobId: "j"})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "a third call waits for a free stream: %v", err)

	cancel1()
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := b.admin.GetJob(c, &retrydv1.GetJobRequest{JobId: "j"})
		return status.Code(err) == codes.NotFound
	}, 5*time.Second, 10*time.Millisecond, "a call goes through once a stream ended")
}
