package auth

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Tokens used across the tests (long enough for CheckToken).
const (
	workerToken  = "worker-token-0123456789abcdef"
	workerToken2 = "worker-token-2-0123456789abcdef"
	adminToken   = "admin-token-0123456789abcdef"
	otherToken   = "not-a-configured-token-0123456789"
)

// identityHeader is the response header in which the test services echo the
// caller's identity ("none" when the context carries none).
const identityHeader = "x-identity"

func echoIdentity(ctx context.Context) metadata.MD {
	v := "none"
	if id, ok := IdentityFromContext(ctx); ok {
		v = id.Role.String() + "|" + id.Name
	}
	return metadata.Pairs(identityHeader, v)
}

type echoRetry struct {
	retrydv1.UnimplementedRetryServiceServer
}

func (echoRetry) ReportSuccess(ctx context.Context, _ *retrydv1.ReportSuccessRequest) (*retrydv1.ReportSuccessResponse, error) {
	if err := grpc.SetHeader(ctx, echoIdentity(ctx)); err != nil {
		return nil, err
	}
	return &retrydv1.ReportSuccessResponse{}, nil
}

func (echoRetry) Dispatch(_ *retrydv1.DispatchRequest, stream grpc.ServerStreamingServer[retrydv1.DispatchResponse]) error {
	if err := stream.SetHeader(echoIdentity(stream.Context())); err != nil {
		return err
	}
	return stream.Send(&retrydv1.DispatchResponse{Kind: &retrydv1.DispatchResponse_Heartbeat{Heartbeat: &retrydv1.Heartbeat{}}})
}

type echoAdmin struct {
	retrydv1.UnimplementedAdminServiceServer
}

func (echoAdmin) GetJob(ctx context.Context, _ *retrydv1.GetJobRequest) (*retrydv1.GetJobResponse, error) {
	if err := grpc.SetHeader(ctx, echoIdentity(ctx)); err != nil {
		return nil, err
	}
	return &retrydv1.GetJobResponse{Job: &retrydv1.Job{}}, nil
}

// bundle is a running server guarded by an Authenticator.
type bundle struct {
	t     testing.TB
	auth  *Authenticator
	addr  string
	clock *clockwork.FakeClock
	logs  *syncBuffer
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setup starts a gRPC server on 127.0.0.1:0 with the RetryService and
// AdminService above, health and reflection, guarded by cfg.
func setup(t testing.TB, cfg Config) *bundle {
	t.Helper()
	b := &bundle{t: t, clock: clockwork.NewFakeClock(), logs: &syncBuffer{}}
	a, err := New(cfg, Options{Clock: b.clock, Logger: slog.New(slog.NewTextHandler(b.logs, nil))})
	require.NoError(t, err)
	b.auth = a
	gs := grpc.NewServer(a.ServerOptions()...)
	retrydv1.RegisterRetryServiceServer(gs, echoRetry{})
	retrydv1.RegisterAdminServiceServer(gs, echoAdmin{})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	reflection.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return b
}

// dial connects in plaintext, or with TLS when tc is not nil.
func (b *bundle) dial(tc *tls.Config) *grpc.ClientConn {
	b.t.Helper()
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(creds))
	require.NoError(b.t, err)
	b.t.Cleanup(func() { conn.Close() })
	return conn
}

// rpc is one kind of call a test makes; it returns the identity the server
// saw (from the echo header) and the call's error.
type rpc func(ctx context.Context, conn *grpc.ClientConn) (string, error)

var rpcs = map[string]rpc{
	"RetryService/ReportSuccess": func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		var md metadata.MD
		_, err := retrydv1.NewRetryServiceClient(conn).ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{}, grpc.Header(&md))
		return first(md), err
	},
	"RetryService/Dispatch": func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		stream, err := retrydv1.NewRetryServiceClient(conn).Dispatch(ctx, &retrydv1.DispatchRequest{})
		if err != nil {
			return "", err
		}
		if _, err := stream.Recv(); err != nil {
			return "", err
		}
		md, err := stream.Header()
		return first(md), err
	},
	"AdminService/GetJob": func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		var md metadata.MD
		_, err := retrydv1.NewAdminServiceClient(conn).GetJob(ctx, &retrydv1.GetJobRequest{}, grpc.Header(&md))
		return first(md), err
	},
	"Health/Check": func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return "", err
	},
	"ServerReflection": func(ctx context.Context, conn *grpc.ClientConn) (string, error) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return "", err
		}
		defer stream.CloseSend()
		err = stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		})
		if err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		// On io.EOF the server has ended the stream: Recv gives its status.
		_, err = stream.Recv()
		return "", err
	},
}

func first(md metadata.MD) string {
	if v := md.Get(identityHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// call makes the named rpc with the given authorization header values.
func (b *bundle) call(conn *grpc.ClientConn, name string, authorization ...string) (string, codes.Code, string) {
	b.t.Helper()
	ctx := b.t.Context()
	for _, v := range authorization {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
	}
	f, ok := rpcs[name]
	require.True(b.t, ok, "no rpc %q", name)
	id, err := f(ctx, conn)
	st := status.Convert(err)
	return id, st.Code(), st.Message()
}

// writeTokens writes a token file (atomically, as the docs recommend).
func writeTokens(t *testing.T, path string, lines ...string) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

func tempFile(t *testing.T, name string) string {
	t.Helper()
	return filepath.Join(t.TempDir(), name)
}

// renameInto moves src over dst (an atomic replacement).
func renameInto(src, dst string) error { return os.Rename(src, dst) }
