// Package config turns retryd's command line, environment and optional YAML
// config file into one validated Config.
//
// Every setting has a flag, an environment twin and (except --config) a
// config file key; see Usage for the full list. Precedence is flags, then
// the environment, then the config file, then the defaults: each source
// replaces, whole, what a weaker one set (a list from the environment
// replaces the file's list). The retry policy's environment names are the
// specification's (MAX_RETRIES, RETRY_DELAY_1..N, RETRY_JITTER,
// <PHASE>_MAX_RETRIES, <PHASE>_RETRY_DELAY_1..N); the others start with
// RETRYD_. An environment variable set to the empty string counts as unset.
//
// Durations are a bare number of seconds (60, 1.5) or Go syntax (250ms,
// 1h30m). Every error names the flag, variable or file key and the bad
// value.
package config

import (
	"github.com/retryd/retryd/store/redisstore"

	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/retryd/retryd/internal/auth"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// Config is retryd's resolved configuration.
type Config struct {
	// Listen is the gRPC listen address (host:port). Defaults to
	// 127.0.0.1:50051.
	Listen string
	// RedisURL selects the Redis store (redis://, rediss://, unix://,
	// redis+sentinel://, redis+cluster://: see store/redisstore/url.go). It may
	// hold a password: log it with RedactedRedisURL. Defaults to "", the
	// embedded store in DataDir.
	RedisURL string
	// RedisPrefix starts every Redis key, so that several retryd
	// deployments can share one Redis. Defaults to "retryd".
	RedisPrefix string
	// DataDir holds the embedded store (used when RedisURL is empty).
	// Relative to the working directory. Defaults to "./retryd-data".
	DataDir string
	// MetricsListen is the address of the HTTP /metrics endpoint. Defaults
	// to "", no endpoint.
	MetricsListen string
	// MetricsPprof also serves Go's profiler (/debug/pprof/) on
	// MetricsListen. Defaults to false: profiles show internals and a CPU
	// profile costs CPU while it runs.
	MetricsPprof bool
	// ConfigFile is the YAML file that was read. Defaults to "", none.
	ConfigFile string
	// Policy is the retry policy. Defaults to scheduler.DefaultPolicyConfig.
	Policy scheduler.PolicyConfig
	// LeaseDuration is how long a dispatched task stays leased to its
	// worker before it counts as failed (LeaseExpired). Defaults to 5m.
	LeaseDuration time.Duration
	// HeartbeatInterval is how often an idle Dispatch stream gets a
	// heartbeat. Defaults to 15s.
	HeartbeatInterval time.Duration
	// ShutdownGrace bounds how long a graceful shutdown waits for
	// in-flight calls. Defaults to 20s.
	ShutdownGrace time.Duration
	// KeepaliveTime is how long a client connection may be silent before
	// the server pings it. Defaults to server.KeepaliveTime (30s).
	KeepaliveTime time.Duration
	// KeepaliveTimeout is how long the server waits for a ping's answer
	// before it closes the connection (and its Dispatch streams). Defaults
	// to server.KeepaliveTimeout (10s).
	KeepaliveTimeout time.Duration
	// TimeSource is "auto" (on Redis, every replica schedules on Redis's
	// clock, read with TIME; the embedded store uses the local clock) or
	// "local" (the local clock, also on Redis). Defaults to "auto".
	TimeSource string
	// TestClockSkew moves the local clock by this much, to stand for a
	// host whose clock is off. Tests only: set by RETRYD_TEST_CLOCK_SKEW,
	// which is neither a flag nor in --help. Defaults to 0.
	TestClockSkew time.Duration
	// MaxPayloadBytes bounds a report's payload. Defaults to 256 KiB.
	MaxPayloadBytes int
	// JobRetention is how long finished jobs are kept. Defaults to
	// store.DefaultJobRetention.
	JobRetention time.Duration
	// StatsRetention is how long the hourly stats counters are kept.
	// Defaults to store.DefaultStatsRetention.
	StatsRetention time.Duration
	// MaxTerminalJobs bounds the failed, completed and canceled jobs kept
	// besides JobRetention: beyond it the least recently updated go first.
	// 0 means no count bound. Defaults to store.DefaultMaxTerminalJobs.
	MaxTerminalJobs int
	// RedisAllowEviction lets retryd run on a Redis whose maxmemory-policy
	// may evict keys (it refuses such a Redis otherwise). Defaults to false.
	RedisAllowEviction bool
	// RedisDurability is "async" (a change is acknowledged once Redis
	// applied it) or "strict" (also once RedisWaitReplicas replicas have
	// it, with WAIT). Defaults to "async".
	RedisDurability string
	// RedisWaitReplicas is how many replicas strict durability waits for.
	// Defaults to 1.
	RedisWaitReplicas int
	// RedisWaitTimeout bounds each wait of strict durability; a report not
	// confirmed in time fails with UNAVAILABLE. Defaults to 1s.
	RedisWaitTimeout time.Duration
	// RedisTLSCA is a PEM bundle of the CAs that sign Redis's certificate,
	// for a rediss URL; "" trusts the system's CAs.
	RedisTLSCA string
	// RedisTLSCert and RedisTLSKey are the client certificate and key
	// retryd presents to a Redis that asks for one (tls-auth-clients).
	// Set both or neither; re-read when they change.
	RedisTLSCert, RedisTLSKey string
	// LogLevel is debug, info, warn or error. Defaults to info.
	LogLevel string
	// LogFormat is text or json. Defaults to text.
	LogFormat string
	// Auth holds the credentials retryd accepts, TLS, and the protected
	// mode. Defaults to none: authentication and TLS off, loopback only.
	Auth auth.Config
}

// Bounds of the few settings whose extremes would hurt.
const (
	// MaxPayloadLimit bounds MaxPayloadBytes: payloads are stored with
	// every attempt and returned by GetJob.
	MaxPayloadLimit = 64 << 20
)

// Default returns the configuration retryd runs with when nothing is set.
func Default() Config {
	return Config{
		Listen:            "127.0.0.1:50051",
		RedisPrefix:       "retryd",
		DataDir:           "./retryd-data",
		Policy:            scheduler.DefaultPolicyConfig(),
		LeaseDuration:     5 * time.Minute,
		HeartbeatInterval: 15 * time.Second,
		ShutdownGrace:     20 * time.Second,
		KeepaliveTime:     30 * time.Second,
		KeepaliveTimeout:  10 * time.Second,
		TimeSource:        "auto",
		MaxPayloadBytes:   256 << 10,
		JobRetention:      store.DefaultJobRetention,
		StatsRetention:    store.DefaultStatsRetention,
		MaxTerminalJobs:   store.DefaultMaxTerminalJobs,
		RedisDurability:   "async",
		RedisWaitReplicas: 1,
		RedisWaitTimeout:  time.Second,
		LogLevel:          "info",
		LogFormat:         "text",
	}
}

// Validate checks a Config built in code (Load's result is already valid).
// Errors name the flag of the bad field.
func (c Config) Validate() error {
	var errs []error
	for i := range settings {
		s := &settings[i]
		if s.check == nil {
			continue
		}
		if err := s.check(&c); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name(), err))
		}
	}
	if err := c.combinations(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// combinations checks the settings that go together: a retryable type
// name that a non-retryable one shadows, the Redis TLS files and their URL,
// --tls-cert with --tls-key, a token given to both roles.
func (c Config) combinations() error {
	var errs []error
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("retry policy: %w", err))
	}
	if c.MetricsPprof && c.MetricsListen == "" {
		errs = append(errs, errors.New("--metrics-pprof needs --metrics-listen (the profiler is served next to /metrics)"))
	}
	if err := checkRedisTLS(&c); err != nil {
		errs = append(errs, fmt.Errorf("Redis TLS (--redis-tls-ca, --redis-tls-cert, --redis-tls-key): %w", err))
	}
	if err := c.Auth.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RedactedRedisURL returns RedisURL with its password replaced by "xxxxx",
// for logs and error messages.
func (c Config) RedactedRedisURL() string { return redactURL(c.RedisURL) }

// LogValue lets the start-up log show the configuration (without the
// policy, which scheduler.Policy describes per phase, and without the Redis
// password or any token).
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("listen", c.Listen),
		slog.String("redis_url", c.RedactedRedisURL()),
		slog.String("redis_prefix", c.RedisPrefix),
		slog.String("data_dir", c.DataDir),
		slog.String("metrics_listen", c.MetricsListen),
		slog.Bool("metrics_pprof", c.MetricsPprof),
		slog.String("config_file", c.ConfigFile),
		slog.Duration("lease_duration", c.LeaseDuration),
		slog.Duration("heartbeat_interval", c.HeartbeatInterval),
		slog.Duration("shutdown_grace", c.ShutdownGrace),
		slog.Duration("keepalive_time", c.KeepaliveTime),
		slog.Duration("keepalive_timeout", c.KeepaliveTimeout),
		slog.String("time_source", c.TimeSource),
		slog.Int("max_payload_bytes", c.MaxPayloadBytes),
		slog.Duration("job_retention", c.JobRetention),
		slog.Duration("stats_retention", c.StatsRetention),
		slog.Int("max_terminal_jobs", c.MaxTerminalJobs),
		slog.Bool("redis_allow_eviction", c.RedisAllowEviction),
		slog.String("redis_durability", c.RedisDurability),
		slog.Int("redis_wait_replicas", c.RedisWaitReplicas),
		slog.Duration("redis_wait_timeout", c.RedisWaitTimeout),
		slog.String("redis_tls_ca", c.RedisTLSCA),
		slog.String("redis_tls_cert", c.RedisTLSCert),
		slog.String("redis_tls_key", c.RedisTLSKey),
		slog.String("log_level", c.LogLevel),
		slog.String("log_format", c.LogFormat),
		slog.Any("auth", c.Auth),
	)
}

func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL, hidden: it may hold a password)"
	}
	return u.Redacted()
}

// The checks below are shared by parsing (which names the source) and
// Validate (which names the flag).

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("not host:port: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// checkRedisURL asks the Redis store itself, so that the forms it accepts
// (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://) are
// listed in one place. Making a client opens no connection.
func checkRedisURL(s string) error {
	if s == "" {
		return nil
	}
	if _, err := url.Parse(s); err != nil {
		// url's error quotes the URL, password included: do not wrap it.
		return errors.New("not a URL")
	}
	c, err := redisstore.NewClient(s, nil)
	if err != nil {
		return err
	}
	return c.Close()
}

// checkRedisTLS checks that the Redis TLS files come with a TLS URL, and
// the certificate with its key.
func checkRedisTLS(c *Config) error {
	if c.RedisTLSCA == "" && c.RedisTLSCert == "" && c.RedisTLSKey == "" {
		return nil
	}
	if (c.RedisTLSCert == "") != (c.RedisTLSKey == "") {
		return errors.New("--redis-tls-cert and --redis-tls-key go together: set both, or neither")
	}
	if c.RedisURL == "" {
		return errors.New("needs --redis-url (the embedded store has no connection to secure)")
	}
	cl, err := redisstore.NewClient(c.RedisURL, &redisstore.ClientTLS{})
	if errors.Is(err, redisstore.ErrTLSWithoutTLS) {
		return redisstore.ErrTLSWithoutTLS
	}
	if err != nil {
		return nil // --redis-url reports it
	}
	return cl.Close()
}

func checkRedisPrefix(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	// The store adds its own {hash tag} after the prefix; braces in the
	// prefix would move every key into one cluster slot or break the tags.
	if strings.ContainsAny(s, "{} \t\r\n") {
		return errors.New("must not contain '{', '}' or white space")
	}
	return nil
}

func checkNonEmpty(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func checkPositive(d time.Duration) error {
	if d <= 0 {
		return errors.New("must be positive")
	}
	return nil
}

// checkKeepalive bounds the keepalive settings: grpc-go raises anything
// under a second to a second, and a ping answered after minutes does not
// notice a dead peer in useful time.
func checkKeepalive(d time.Duration) error {
	if d < time.Second || d > time.Hour {
		return errors.New("must be between 1s and 1h")
	}
	return nil
}

func checkNotNegative(d time.Duration) error {
	if d < 0 {
		return errors.New("must not be negative")
	}
	return nil
}

func checkStatsRetention(d time.Duration) error {
	if d < store.StatsBucket {
		return fmt.Errorf("must be at least %v (the counters are hourly)", store.StatsBucket)
	}
	return nil
}

// MaxMaxTerminalJobs bounds --max-terminal-jobs: a count that no store
// could hold is a typo, not a setting.
const MaxMaxTerminalJobs = 1_000_000_000

func checkMaxTerminalJobs(n int) error {
	if n < 0 || n > MaxMaxTerminalJobs {
		return fmt.Errorf("must be 0 (no count bound) to %d", MaxMaxTerminalJobs)
	}
	return nil
}

// timeSources are the values of --time-source.
var timeSources = []string{"auto", "local"}

// redisDurabilities are the values of --redis-durability.
var redisDurabilities = []string{"async", "strict"}

func checkWaitReplicas(n int) error {
	if n < 1 || n > 100 {
		return errors.New("must be 1 to 100")
	}
	return nil
}

func checkWaitTimeout(d time.Duration) error {
	// WAIT counts whole milliseconds, and WAIT with 0 never returns.
	if d < time.Millisecond || d > time.Minute {
		return errors.New("must be 1ms to 1m")
	}
	return nil
}

func checkPayloadBytes(n int) error {
	if n < 1 || n > MaxPayloadLimit {
		return fmt.Errorf("must be 1 to %d bytes (64 MiB)", MaxPayloadLimit)
	}
	return nil
}

func checkOneOf(s string, allowed ...string) error {
	for _, a := range allowed {
		if s == a {
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(allowed, ", "))
}

// ErrHelp is returned (wrapped) by Load when -h or --help was given, after
// the usage was written to standard output. It is flag.ErrHelp.
var ErrHelp = flag.ErrHelp

// ErrVersion is returned by Load when --version was given, after the build
// was written to standard output.
var ErrVersion = errors.New("--version")
