package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/teststore"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/server"
	"github.com/retryd/retryd/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-redis and bbolt keep no goroutines after Close; these belong to
		// grpc's and the runtime's shared pools.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// scaled is the specification's 60 s / 300 s / 900 s schedule divided by 3000.
var scaled = []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, 300 * time.Millisecond}

type options struct {
	policy    scheduler.PolicyConfig
	lease     time.Duration
	heartbeat time.Duration
	payload   int
	streams   uint32 // calls per connection; 0: server.MaxConcurrentStreams
	grpcOpts  []grpc.ServerOption
}

// bundle is what a server test needs: a running server on a fresh store,
// and clients.
type bundle struct {
	addr   string
	srv    *server.Server
	disp   *scheduler.Dispatcher
	store  store.Store
	retry  retrydv1.RetryServiceClient
	admin  retrydv1.AdminServiceClient
	health healthpb.HealthClient
}

func defaultOptions() options {
	p := scheduler.DefaultPolicyConfig()
	p.Delays = scaled
	p.Jitter = 0
	return options{policy: p, lease: 5 * time.Second, heartbeat: time.Second}
}

func setup(t testing.TB, kind string, opt options) *bundle {
	t.Helper()
	return setupOn(t, teststore.New(t, kind), opt)
}

// setupOn is setup on a store the test opened.
func setupOn(t testing.TB, st store.Store, opt options) *bundle {
	t.Helper()
	policy, err := scheduler.NewPolicy(opt.policy, nil)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: st, LeaseDuration: opt.lease, Logger: log})
	require.NoError(t, err)
	reaper, err := scheduler.NewReaper(scheduler.ReaperConfig{Store: st, Policy: policy, MaxSleep: 20 * time.Millisecond, Logger: log})
	require.NoError(t, err)
	srv, err := server.New(server.Config{
		Store:             st,
		Policy:            policy,
		Dispatcher:        disp,
		LeaseDuration:     opt.lease,
		HeartbeatInterval: opt.heartbeat,
		MaxPayloadBytes:   opt.payload,
		HealthInterval:    50 * time.Millisecond,
		Logger:            log,

		MaxConcurrentStreams: opt.streams,
		ServerOptions:        opt.grpcOpts,
	})
	require.NoError(t, err)
	require.NoError(t, disp.Start(context.Background()))
	reaper.Start(context.Background())
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
		reaper.Stop()
		disp.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return &bundle{
		addr:   lis.Addr().String(),
		srv:    srv,
		disp:   disp,
		store:  st,
		retry:  retrydv1.NewRetryServiceClient(conn),
		admin:  retrydv1.NewAdminServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
	}
}

// received is a task and when the worker got it.
type received struct {
	task *retrydv1.Task
	at   time.Time
}

// worker is a Dispatch stream read by a goroutine; tasks arrive on C.
type worker struct {
	C      chan received
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	beats  int
}

func (b *bundle) dispatch(t *testing.T, req *retrydv1.DispatchRequest) *worker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := b.retry.Dispatch(ctx, req)
	require.NoError(t, err)
	w := &worker{C: make(chan received, 1024), cancel: cancel, done: make(chan error, 1)}
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				w.done <- err
				return
			}
			if task := msg.GetTask(); task != nil {
				w.C <- received{task: task, at: time.Now()}
			} else {
				w.mu.Lock()
				w.beats++
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

func (w *worker) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-w.C:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no task arrived within 10s")
	}
	return received{}
}

// none asserts that no task arrives within d.
func (w *worker) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case r := <-w.C:
		t.Fatalf("unexpected task: %v", r.task)
	case <-time.After(d):
	}
}

func forEachStore(t *testing.T, f func(t *testing.T, kind string)) {
	for _, kind := range teststore.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			f(t, kind)
		})
	}
}
