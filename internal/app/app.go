// Package app wires retryd's parts from a Config: the store, the policy, the
// dispatcher, reaper and janitor, the gRPC server and the metrics endpoint;
// it runs them until the context ends and then shuts down in order.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/internal/auth"
	"github.com/retryd/retryd/internal/buildinfo"
	"github.com/retryd/retryd/internal/config"
	"github.com/retryd/retryd/internal/metrics"
	"github.com/retryd/retryd/internal/redislog"
	"github.com/retryd/retryd/internal/timesync"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/server"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/boltstore"
	"github.com/retryd/retryd/store/redisstore"
)

// DBFileName is the embedded store's file inside the data directory.
const DBFileName = "retryd.db"

// Run serves until ctx ends (SIGTERM), then shuts down gracefully: health
// goes NOT_SERVING, the dispatcher stops claiming and ends the streams
// (tasks claimed but not sent go back to the schedule), unary calls finish
// within the grace period, and the store is closed last.
func Run(ctx context.Context, cfg config.Config, logOut io.Writer) error {
	log, err := newLogger(cfg, logOut)
	if err != nil {
		return err
	}
	policy, err := scheduler.NewPolicy(cfg.Policy, nil)
	if err != nil {
		return err
	}
	// Credentials and certificates are read before anything else starts,
	// so that a bad file stops retryd at once.
	authn, err := auth.New(cfg.Auth, auth.Options{Logger: log})
	if err != nil {
		return err
	}
	rtls, err := redisTLS(cfg, log)
	if err != nil {
		return err
	}
	st, where, err := openStore(ctx, cfg, rtls, log)
	if err != nil {
		return err
	}
	defer st.Close()
	clock, stopClock, err := newClock(ctx, cfg, rtls, log)
	if err != nil {
		return err
	}
	defer stopClock()
	log.Info("retryd starting", "build", buildinfo.Read().String(), "listen", cfg.Listen, "store", where, "metrics_listen", cfg.MetricsListen,
		"lease_duration", cfg.LeaseDuration, "jitter", policy.Jitter())
	for _, line := range policyLines(policy) {
		log.Info("policy", "phase", line.phase, "schedule", line.schedule)
	}

	m := metrics.New()
	m.RegisterBacklog(st, clock)
	if tc, ok := clock.(*timesync.Clock); ok {
		m.RegisterClock(func() (time.Duration, time.Duration) { l := tc.Last(); return l.Skew, l.RTT })
	}
	disp, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{
		Store:         st,
		Clock:         clock,
		Logger:        log,
		LeaseDuration: cfg.LeaseDuration,
	})
	if err != nil {
		return err
	}
	reaper, err := scheduler.NewReaper(scheduler.ReaperConfig{
		Store:     st,
		Policy:    policy,
		Clock:     clock,
		Logger:    log,
		OnExpired: func(l store.Lease, _ store.Verdict) { m.LeaseExpired(l.Phase) },
	})
	if err != nil {
		return err
	}
	janitor, err := scheduler.NewJanitor(scheduler.JanitorConfig{Store: st, Clock: clock, Logger: log, OnExpired: m.Expired})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		Store:             st,
		Policy:            policy,
		Dispatcher:        disp,
		Metrics:           m,
		Clock:             clock,
		Logger:            log,
		LeaseDuration:     cfg.LeaseDuration,
		HeartbeatInterval: cfg.HeartbeatInterval,
		MaxPayloadBytes:   cfg.MaxPayloadBytes,
		KeepaliveTime:     cfg.KeepaliveTime,
		KeepaliveTimeout:  cfg.KeepaliveTimeout,
		ServerOptions:     authn.ServerOptions(),
	})
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s (--listen / RETRYD_LISTEN): %w", cfg.Listen, err)
	}
	// The protected mode looks at the address the kernel bound, so that
	// host names and ":port" are judged as they really listen.
	if err := cfg.Auth.CheckListen(lis.Addr()); err != nil {
		lis.Close()
		return err
	}
	log.Info("authentication", "auth", cfg.Auth)
	for _, w := range cfg.Auth.Warnings(lis.Addr()) {
		log.Warn(w)
	}
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen on %s (--metrics-listen / RETRYD_METRICS_LISTEN): %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		if cfg.MetricsPprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server failed", "err", err)
			}
		}()
	}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := disp.Start(runCtx); err != nil {
		lis.Close()
		return err
	}
	reaper.Start(runCtx)
	janitor.Start(runCtx)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("retryd serving", "addr", lis.Addr().String())

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", cfg.ShutdownGrace)
	case runErr = <-serveErr:
		log.Error("gRPC server failed", "err", runErr)
	}

	grace, cancelGrace := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancelGrace()
	janitor.Stop()
	reaper.Stop()
	disp.Stop()
	srv.Shutdown(grace)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(grace)
	}
	log.Info("retryd stopped")
	return runErr
}

// openStore opens Redis when a URL is configured, else the embedded store.
// For Redis it logs what a crash of Redis can lose with its persistence
// settings, and every warning of the store's checks (eviction allowed,
// settings that could not be read, too few replicas for strict durability).
func openStore(ctx context.Context, cfg config.Config, rtls *redisstore.ClientTLS, log *slog.Logger) (store.Store, string, error) {
	maxTerminal := cfg.MaxTerminalJobs
	if maxTerminal == 0 {
		maxTerminal = store.NoCountBound
	}
	if cfg.RedisURL != "" {
		// go-redis's own lines (a dial retry each, while Redis is down)
		// go to the structured log, once per kind every 10 s.
		redis.SetLogger(redislog.New(log, redislog.DefaultInterval, nil))
		st, err := redisstore.Open(ctx, cfg.RedisURL, redisstore.Options{
			Prefix:          cfg.RedisPrefix,
			JobRetention:    cfg.JobRetention,
			StatsRetention:  cfg.StatsRetention,
			MaxTerminalJobs: maxTerminal,
			AllowEviction:   cfg.RedisAllowEviction,
			Durability:      redisstore.Durability(cfg.RedisDurability),
			WaitReplicas:    cfg.RedisWaitReplicas,
			WaitTimeout:     cfg.RedisWaitTimeout,
			TLS:             rtls,
		})
		if errors.Is(err, redisstore.ErrEvictionPolicy) {
			return nil, "", fmt.Errorf("%w (or start retryd with --redis-allow-eviction / RETRYD_REDIS_ALLOW_EVICTION=true to accept the risk)", err)
		}
		if err != nil {
			return nil, "", fmt.Errorf("open Redis store (--redis-url / RETRYD_REDIS_URL): %w", err)
		}
		info := st.ServerInfo()
		log.Info("redis", "version", info.Version, "maxmemory_policy", info.MaxmemoryPolicy,
			"appendonly", info.AppendOnly, "appendfsync", info.AppendFsync, "replicas", info.ConnectedReplicas,
			"durability", cfg.RedisDurability, "read_with", info.Source, "loss_on_redis_crash", info.LossWindow())
		for _, w := range info.Warnings {
			log.Warn("redis: " + w)
		}
		return st, "redis", nil
	}
	if cfg.RedisDurability != "async" {
		log.Warn("--redis-durability applies to the Redis store only; the embedded store fsyncs every change before it is acknowledged")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("create data dir (--data-dir / RETRYD_DATA_DIR): %w", err)
	}
	path, err := filepath.Abs(filepath.Join(cfg.DataDir, DBFileName))
	if err != nil {
		return nil, "", err
	}
	st, err := boltstore.Open(path, boltstore.Options{
		JobRetention:    cfg.JobRetention,
		StatsRetention:  cfg.StatsRetention,
		MaxTerminalJobs: maxTerminal,
	})
	if err != nil {
		return nil, "", fmt.Errorf("open embedded store: %w", err)
	}
	return st, "embedded " + path, nil
}

func newLogger(cfg config.Config, out io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.LogFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(out, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", cfg.LogFormat)
}

type policyLine struct{ phase, schedule string }

// policyLines describes the effective policy: the default and every phase
// with an override.
func policyLines(p *scheduler.Policy) []policyLine {
	lines := []policyLine{{"(default)", p.Phase("").String()}}
	for _, name := range p.Phases() {
		lines = append(lines, policyLine{name, p.Phase(name).String()})
	}
	return lines
}
