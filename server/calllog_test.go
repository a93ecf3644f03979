package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/teststore"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/server"
	"github.com/retryd/retryd/store"
)

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// finishedCalls returns the "finished call" lines logged so far.
func (s *syncBuffer) finishedCalls(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		if rec["msg"] == "finished call" {
			out = append(out, rec)
		}
	}
	return out
}

// slowUnavailable is a store whose RecordFailure takes a while and fails.
type slowUnavailable struct {
	store.Store
	delay time.Duration
}

func (s slowUnavailable) RecordFailure(context.Context, store.Failure) (store.FailureResult, error) {
	time.Sleep(s.delay)
	return store.FailureResult{}, store.ErrUnavailable
}

// logServer serves retryd on the embedded store, logging JSON at level
// into a buffer; RecordFailure takes delay and fails.
func logServer(t *testing.T, level slog.Level, delay time.Duration) (retrydv1.RetryServiceClient, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: level}))
	st := slowUnavailable{Store: teststore.New(t, "bolt"), delay: delay}
	cfg := scheduler.DefaultPolicyConfig()
	policy, err := scheduler.NewPolicy(cfg, nil)
	require.NoError(t, err)
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: st, Logger: log})
	require.NoError(t, err)
	srv, err := server.New(server.Config{Store: st, Policy: policy, Dispatcher: disp, Logger: log})
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return retrydv1.NewRetryServiceClient(conn), buf
}

// TestFailedCallsAreLogged: a failed call is logged with its code, its
// error and its own duration; a successful call is not logged at info.
func TestFailedCallsAreLogged(t *testing.T) {
	t.Parallel()
	const delay = 50 * time.Millisecond
	client, buf := logServer(t, slog.LevelInfo, delay)
	ctx := context.Background()
	_, err := client.ExtendLease(ctx, &retrydv1.ExtendLeaseRequest{JobId: "j"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	started := time.Now()
	_, err = client.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "j", Phase: "extraction", ErrorType: "Timeout"})
	require.Equal(t, codes.Unavailable, status.Code(err))
	// A successful call: the success of a job retryd has not seen creates it, completed.
	_, err = client.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "unknown-job", Phase: "extraction"})
	require.NoError(t, err)

	var lines []map[string]any
	require.Eventually(t, func() bool { lines = buf.finishedCalls(t); return len(lines) >= 2 }, 5*time.Second, time.Millisecond)
	require.Len(t, lines, 2, "the OK call is not logged at info level")
	require.Equal(t, "ExtendLease", lines[0]["grpc.method"])
	require.Equal(t, "InvalidArgument", lines[0]["grpc.code"])
	require.Equal(t, "ReportFailure", lines[1]["grpc.method"])
	require.Equal(t, "Unavailable", lines[1]["grpc.code"])
	require.Contains(t, lines[1]["grpc.error"], "unavailable")
	require.Equal(t, "retryd.v1.RetryService", lines[1]["grpc.service"])
	require.NotEmpty(t, lines[1]["peer.address"])
	ms, err := strconv.ParseFloat(lines[1]["grpc.time_ms"].(string), 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ms, float64(delay.Milliseconds()), "the duration is the call's, not the logging's")
	start, err := time.Parse(time.RFC3339, lines[1]["grpc.start_time"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, started, start, 2*time.Second)
}

// TestDebugLogsEveryCall: at debug level successful calls are logged too.
func TestDebugLogsEveryCall(t *testing.T) {
	t.Parallel()
	client, buf := logServer(t, slog.LevelDebug, 0)
	_, err := client.ReportSuccess(context.Background(), &retrydv1.ReportSuccessRequest{JobId: "unknown-job", Phase: "extraction"})
	require.NoError(t, err)
	var lines []map[string]any
	require.Eventually(t, func() bool { lines = buf.finishedCalls(t); return len(lines) >= 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "ReportSuccess", lines[0]["grpc.method"])
	require.Equal(t, "OK", lines[0]["grpc.code"])
	require.Equal(t, "DEBUG", lines[0]["level"])
	_, err = strconv.ParseFloat(lines[0]["grpc.time_ms"].(string), 64)
	require.NoError(t, err)
}

// TestEndedStreamsAreLoggedAtInfo: a Dispatch stream that its worker's
// deadline ended is logged at info with its code, not as a warning: a
// stream lasts as long as its client wants.
func TestEndedStreamsAreLoggedAtInfo(t *testing.T) {
	t.Parallel()
	client, buf := logServer(t, slog.LevelInfo, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stream, err := client.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w"})
	require.NoError(t, err)
	_, err = stream.Recv()
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))
	var lines []map[string]any
	require.Eventually(t, func() bool { lines = buf.finishedCalls(t); return len(lines) >= 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "Dispatch", lines[0]["grpc.method"])
	require.Contains(t, []any{"DeadlineExceeded", "Canceled"}, lines[0]["grpc.code"])
	require.Equal(t, "INFO", lines[0]["level"])
}
