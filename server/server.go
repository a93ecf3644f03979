// Package server holds retryd's gRPC handlers and the gRPC server around
// them: validation, conversion, and calls into the scheduler and the store,
// with no storage logic of its own.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/metrics"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// Keepalive defaults (Config.KeepaliveTime, .KeepaliveTimeout) and the
// enforcement policy. The server pings a connection from which it has read
// nothing for KeepaliveTime and closes it when the ping is not answered
// within KeepaliveTimeout, so that the streams of a silently dead worker
// (no FIN: a crashed host, a dropped NAT or proxy entry) end and their
// unsent tasks go back within KeepaliveTime+KeepaliveTimeout. Clients may
// ping as often as every KeepaliveMinTime, also without active streams; a
// client that pings more often is sent GOAWAY ("too_many_pings"), so
// clients must set their keepalive time to at least KeepaliveMinTime.
// README.md ("Streams and dead peers") lists the matching client settings.
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 10 * time.Second
	KeepaliveMinTime = 10 * time.Second
)

// MaxConcurrentStreams bounds the calls (unary calls and Dispatch streams)
// one client connection may have open at once; further calls wait in the
// client until one ends (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Each
// Dispatch stream holds a subscription and a sender goroutine, and grpc-go
// sets no bound by default: a client that leaks streams would otherwise
// grow retryd's memory without end. A worker process needs a stream per
// consumer and a call per task in flight, far below it.
const MaxConcurrentStreams = 1000

// Config holds what the server needs.
type Config struct {
	// Store is the storage backend. Required.
	Store store.Store
	// Policy decides failures. Required.
	Policy *scheduler.Policy
	// Dispatcher feeds Dispatch streams. Required.
	Dispatcher *scheduler.Dispatcher
	// Metrics receives RPC and decision metrics. Defaults to a fresh set.
	Metrics *metrics.Metrics
	// Clock gives "now" to every handler. Defaults to the real clock.
	Clock clockwork.Clock
	// Logger. Defaults to slog.Default().
	Logger *slog.Logger
	// LeaseDuration is ExtendLease's default extension. Defaults to 5 minutes.
	LeaseDuration time.Duration
	// HeartbeatInterval is the idle time after which a Dispatch stream gets
	// a heartbeat. Defaults to 15 seconds.
	HeartbeatInterval time.Duration
	// MaxPayloadBytes bounds each encoded Struct in a request. Defaults to 256 KiB.
	MaxPayloadBytes int
	// HealthInterval is how often readiness is checked against the store.
	// Defaults to 2 seconds.
	HealthInterval time.Duration
	// KeepaliveTime is how long a connection may be silent before the
	// server pings it. Defaults to KeepaliveTime (30 s).
	KeepaliveTime time.Duration
	// KeepaliveTimeout is how long the server waits for the ping's answer
	// before it closes the connection. Defaults to KeepaliveTimeout (10 s).
	KeepaliveTimeout time.Duration
	// MaxConcurrentStreams overrides the package's MaxConcurrentStreams
	// (tests).
	MaxConcurrentStreams uint32
	// ServerOptions are appended to the gRPC server's options (TLS, auth).
	ServerOptions []grpc.ServerOption
}

// deps is what every handler shares.
type deps struct {
	store         store.Store
	policy        *scheduler.Policy
	dispatcher    *scheduler.Dispatcher
	metrics       *metrics.Metrics
	clock         clockwork.Clock
	log           *slog.Logger
	leaseDuration time.Duration
	heartbeat     time.Duration
	maxPayload    int
	// senders counts the goroutines sending on Dispatch streams (see
	// sender); Shutdown waits for them before the store may close.
	senders sync.WaitGroup
}

// Server is retryd's gRPC server: both services, health and reflection.
type Server struct {
	deps           *deps
	grpc           *grpc.Server
	health         *health.Server
	healthInterval time.Duration
	calls          *calls

	mu       sync.Mutex
	stopping bool
	cancel   context.CancelFunc
	done     chan struct{}
}

// New builds the server and registers every service.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Policy == nil || cfg.Dispatcher == nil {
		return nil, errors.New("server: Config.Store, .Policy and .Dispatcher are required")
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 5 * time.Minute
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 15 * time.Second
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = 256 << 10
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = KeepaliveTime
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = KeepaliveTimeout
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = MaxConcurrentStreams
	}
	d := &deps{
		store:         cfg.Store,
		policy:        cfg.Policy,
		dispatcher:    cfg.Dispatcher,
		metrics:       cfg.Metrics,
		clock:         cfg.Clock,
		log:           cfg.Logger,
		leaseDuration: cfg.LeaseDuration,
		heartbeat:     cfg.HeartbeatInterval,
		maxPayload:    cfg.MaxPayloadBytes,
	}

	logger := interceptorLogger(cfg.Logger)
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContextAndCallMeta(callStartFields),
		logging.WithLevels(unaryLevel),
	}
	streamLogOpts := append(slices.Clone(logOpts), logging.WithLevels(streamLevel))
	recoveryOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		cfg.Logger.ErrorContext(ctx, "panic in a handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})}
	inFlight := &calls{}
	opts := []grpc.ServerOption{
		// Read top to bottom: the call count (for Shutdown) sees every call
		// until its handler returns, metrics see every call, logging sees
		// every call with its final code, and recovery comes next so that
		// a panic becomes an Internal status before logging and metrics
		// record it (the panic text never reaches the client).
		// Authentication, when configured, arrives through
		// Config.ServerOptions and runs after these, innermost: refused
		// calls are still counted and logged.
		grpc.ChainUnaryInterceptor(
			inFlight.unary(),
			cfg.Metrics.GRPC.UnaryServerInterceptor(),
			logUnaryCalls(cfg.Logger, logging.UnaryServerInterceptor(logger, logOpts...)),
			recovery.UnaryServerInterceptor(recoveryOpts...),
		),
		grpc.ChainStreamInterceptor(
			inFlight.stream(),
			cfg.Metrics.GRPC.StreamServerInterceptor(),
			logging.StreamServerInterceptor(logger, streamLogOpts...),
			recovery.StreamServerInterceptor(recoveryOpts...),
		),
		// A payload at the limit, plus the rest of a maximal request.
		grpc.MaxRecvMsgSize(cfg.MaxPayloadBytes*3 + MaxErrorMessageBytes + 256<<10),
		grpc.MaxHeaderListSize(MaxMetadataBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
	}
	opts = append(opts, cfg.ServerOptions...)
	gs := grpc.NewServer(opts...)
	retrydv1.RegisterRetryServiceServer(gs, &retryService{deps: d})
	retrydv1.RegisterAdminServiceServer(gs, &adminService{deps: d})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	cfg.Metrics.GRPC.InitializeMetrics(gs)
	s := &Server{deps: d, grpc: gs, health: hs, healthInterval: cfg.HealthInterval, calls: inFlight}
	s.setServing(false)
	return s, nil
}

// unaryLevel is the log level of a finished unary call: successful calls
// are the hot path (thousands a second), debug only; the rest as
// go-grpc-middleware's default (DEADLINE_EXCEEDED, UNAVAILABLE… warn).
func unaryLevel(c codes.Code) logging.Level {
	if c == codes.OK {
		return logging.LevelDebug
	}
	return logging.DefaultServerCodeToLevel(c)
}

// streamLevel is unaryLevel for a stream, which lasts as long as its client
// wants: one that the client cancelled or gave a deadline (a worker
// stopping, grpcurl -max-time) ended normally, info rather than a warning.
func streamLevel(c codes.Code) logging.Level {
	if c == codes.Canceled || c == codes.DeadlineExceeded {
		return logging.LevelInfo
	}
	return unaryLevel(c)
}

// streamWorkers sizes gRPC's pool of handler goroutines. Without one, every
// call runs on a new goroutine whose stack grows, by copying, to the depth
// of the interceptors, the handler and the Redis client: about 8% of the
// server's CPU under the throughput benchmark (BENCHMARKS.md). A worker
// keeps its grown stack for the next call. A call that finds every worker
// busy (a Dispatch stream holds one for its lifetime) gets a goroutine of
// its own as before, so the pool only needs to cover the usual number of
// concurrent calls.
func streamWorkers() uint32 {
	return uint32(32 * runtime.GOMAXPROCS(0))
}

// interceptorLogger adapts slog to go-grpc-middleware's logging interface.
func interceptorLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// services are the health service names reported: "" (the whole server)
// and each retryd service.
var services = []string{"", retrydv1.RetryService_ServiceDesc.ServiceName, retrydv1.AdminService_ServiceDesc.ServiceName}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range services {
		s.health.SetServingStatus(name, st)
	}
}

// GRPC returns the underlying server (tests, extra services).
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Serve checks readiness against the store in the background (health is
// SERVING only while the store answers) and serves on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return grpc.ErrServerStopped
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan struct{})
	s.mu.Unlock()
	s.checkReady(ctx)
	go s.readinessLoop(ctx)
	return s.grpc.Serve(lis)
}

func (s *Server) readinessLoop(ctx context.Context) {
	defer close(s.done)
	t := s.deps.clock.NewTicker(s.healthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			s.checkReady(ctx)
		}
	}
}

func (s *Server) checkReady(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.healthInterval)
	defer cancel()
	err := s.deps.store.Ping(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping || ctx.Err() != nil && err != nil {
		return
	}
	if err != nil {
		s.deps.log.Warn("store not ready: health is NOT_SERVING", "err", err)
	}
	s.setServing(err == nil)
}

// Shutdown turns health to NOT_SERVING, then lets calls in progress finish.
// The caller stops the dispatcher first so that Dispatch streams end. Once
// no call has run for a moment (drainSettle), the connections still open
// are closed (see calls for why grpc-go would otherwise keep them up to 5 s
// or longer); calls still running when ctx ends are cut. It returns after
// every stream's sender has given back what it could not send.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.stopping = true
	cancel, done := s.cancel, s.done
	s.health.Shutdown()
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	qctx, cancelQuiesce := context.WithCancel(ctx)
	defer cancelQuiesce()
	select {
	case <-stopped:
	case <-s.calls.quiesced(qctx, s.deps.clock, drainSettle):
		s.grpc.Stop()
		<-stopped
	case <-ctx.Done():
		s.grpc.Stop()
		<-stopped
	}
	s.deps.senders.Wait()
}
