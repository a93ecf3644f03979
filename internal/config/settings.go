package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/retryd/retryd/internal/auth"
	"github.com/retryd/retryd/scheduler"
)

// kind says how a setting's value is shaped.
type kind uint8

const (
	// scalar: one value.
	scalar kind = iota
	// list: a comma-separated flag or environment value, a YAML sequence.
	list
	// phaseScalar: one value per phase (--phase-max-retries PHASE=N).
	phaseScalar
	// phaseList: a list per phase (--phase-retry-delays PHASE=LIST).
	phaseList
)

// setting is one configurable value and every name it goes by. The flags,
// the environment, the config file, the help text and Validate are all
// driven by the settings table, so that they cannot drift apart.
type setting struct {
	group string
	flag  string
	// env is the environment twin; for the retry delays and the per-phase
	// settings it is the documented pattern, read by env.go.
	env string
	// key is the config file key ("" = not in the file); per-phase
	// settings live under phases.<phase>.<key>.
	key  string
	arg  string
	help string
	kind kind
	// secret values are redacted in error messages.
	secret bool
	// hidden values (tokens) never appear in error messages at all.
	hidden bool
	// boolean settings are flags without a value (--allow-unauthenticated).
	boolean bool
	// show renders the value in c, for the defaults in the help.
	show func(c *Config) string
	// set parses vals (exactly one for scalar kinds) into c. A failing list
	// item is reported as an *itemError.
	set func(c *Config, phase string, vals []string) error
	// check validates the value in c, for Validate; nil when the value
	// cannot be invalid or is checked as part of the policy.
	check func(c *Config) error
}

// itemError is a list item that failed to parse.
type itemError struct {
	index int
	err   error
}

func (e *itemError) Error() string { return fmt.Sprintf("item %d: %v", e.index+1, e.err) }
func (e *itemError) Unwrap() error { return e.err }

// settings is the table of every setting, in help order.
var settings = []setting{
	// Server.
	stringSetting("Server", "listen", "RETRYD_LISTEN", "listen", "ADDR",
		"gRPC listen address (host:port).",
		func(c *Config) *string { return &c.Listen }, checkHostPort),
	stringSetting("Server", "metrics-listen", "RETRYD_METRICS_LISTEN", "metrics_listen", "ADDR",
		`HTTP address serving /metrics (host:port); "" turns it off.`,
		func(c *Config) *string { return &c.MetricsListen },
		func(s string) error {
			if s == "" {
				return nil
			}
			return checkHostPort(s)
		}),
	boolSetting("Server", "metrics-pprof", "RETRYD_METRICS_PPROF", "metrics_pprof",
		"Also serve Go's profiler (/debug/pprof/) on --metrics-listen, for a CPU or heap profile of a "+
			"running retryd. Off by default: profiles show internals, and a CPU profile costs CPU while it runs.",
		func(c *Config) *bool { return &c.MetricsPprof }),
	durationSetting("Server", "heartbeat-interval", "RETRYD_HEARTBEAT_INTERVAL", "heartbeat_interval",
		"How often an idle Dispatch stream gets a heartbeat.",
		func(c *Config) *time.Duration { return &c.HeartbeatInterval }, checkPositive),
	durationSetting("Server", "lease-duration", "RETRYD_LEASE_DURATION", "lease_duration",
		"How long a dispatched task stays leased to its worker before it counts as failed (LeaseExpired).",
		func(c *Config) *time.Duration { return &c.LeaseDuration }, checkPositive),
	{
		group: "Server", flag: "max-payload-bytes", env: "RETRYD_MAX_PAYLOAD_BYTES", key: "max_payload_bytes",
		arg: "BYTES", help: "Largest accepted payload, in bytes (KiB and MiB suffixes accepted: 256KiB).",
		show: func(c *Config) string { return strconv.Itoa(c.MaxPayloadBytes) },
		set: func(c *Config, _ string, v []string) error {
			n, err := parseBytes(v[0])
			if err != nil {
				return err
			}
			c.MaxPayloadBytes = n
			return checkPayloadBytes(n)
		},
		check: func(c *Config) error { return checkPayloadBytes(c.MaxPayloadBytes) },
	},
	durationSetting("Server", "shutdown-grace", "RETRYD_SHUTDOWN_GRACE", "shutdown_grace",
		"How long a graceful shutdown (SIGTERM) waits for in-flight calls; 0 stops at once.",
		func(c *Config) *time.Duration { return &c.ShutdownGrace }, checkNotNegative),
	durationSetting("Server", "keepalive-time", "RETRYD_KEEPALIVE_TIME", "keepalive_time",
		"How long a client connection may be silent before the server pings it (a dead peer is noticed after this plus --keepalive-timeout).",
		func(c *Config) *time.Duration { return &c.KeepaliveTime }, checkKeepalive),
	durationSetting("Server", "keepalive-timeout", "RETRYD_KEEPALIVE_TIMEOUT", "keepalive_timeout",
		"How long the server waits for the answer to its ping before it closes the connection and its Dispatch streams.",
		func(c *Config) *time.Duration { return &c.KeepaliveTimeout }, checkKeepalive),
	{
		group: "Server", flag: "time-source", env: "RETRYD_TIME_SOURCE", key: "time_source", arg: "SOURCE",
		help: "auto: on Redis every replica schedules on Redis's clock (TIME; the Redis user needs +time), so a replica whose clock is off dispatches nothing early; the embedded store uses the local clock. " +
			"local: the local clock, also on Redis (replicas' clocks must then agree).",
		show: func(c *Config) string { return c.TimeSource },
		set: func(c *Config, _ string, v []string) error {
			c.TimeSource = strings.ToLower(strings.TrimSpace(v[0]))
			return checkOneOf(c.TimeSource, timeSources...)
		},
		check: func(c *Config) error { return checkOneOf(c.TimeSource, timeSources...) },
	},
	{
		group: "Server", flag: "config", env: "RETRYD_CONFIG", arg: "FILE",
		help: "YAML config file with the same settings under the keys listed here (unknown keys are errors).",
		show: func(c *Config) string { return c.ConfigFile },
		// Read before every other setting (it selects the file); see load.
		set: func(c *Config, _ string, v []string) error { c.ConfigFile = v[0]; return nil },
	},

	// Store.
	{
		group: "Store", flag: "redis-url", env: "RETRYD_REDIS_URL", key: "redis_url", arg: "URL", secret: true,
		help: `Redis URL (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://); "" uses the embedded store in --data-dir.`,
		show: func(c *Config) string { return c.RedisURL },
		set: func(c *Config, _ string, v []string) error {
			c.RedisURL = strings.TrimSpace(v[0])
			return checkRedisURL(c.RedisURL)
		},
		check: func(c *Config) error { return checkRedisURL(c.RedisURL) },
	},
	stringSetting("Store", "redis-prefix", "RETRYD_REDIS_PREFIX", "redis_prefix", "PREFIX",
		"Prefix of every Redis key, so that several deployments can share one Redis.",
		func(c *Config) *string { return &c.RedisPrefix }, checkRedisPrefix),
	stringSetting("Store", "data-dir", "RETRYD_DATA_DIR", "data_dir", "DIR",
		"Directory of the embedded store (used when --redis-url is empty).",
		func(c *Config) *string { return &c.DataDir }, checkNonEmpty),
	durationSetting("Store", "job-retention", "RETRYD_JOB_RETENTION", "job_retention",
		"How long failed, completed and canceled jobs are kept.",
		func(c *Config) *time.Duration { return &c.JobRetention }, checkPositive),
	durationSetting("Store", "stats-retention", "RETRYD_STATS_RETENTION", "stats_retention",
		"How long the hourly retry statistics are kept.",
		func(c *Config) *time.Duration { return &c.StatsRetention }, checkStatsRetention),
	intSetting("Store", "max-terminal-jobs", "RETRYD_MAX_TERMINAL_JOBS", "max_terminal_jobs",
		"Most failed, completed and canceled jobs kept, whatever their age: beyond it the least recently "+
			"updated are removed (counted in retryd_jobs_expired_total{reason=\"count\"}). 0: no count bound.",
		func(c *Config) *int { return &c.MaxTerminalJobs }, checkMaxTerminalJobs),
	boolSetting("Store", "redis-allow-eviction", "RETRYD_REDIS_ALLOW_EVICTION", "redis_allow_eviction",
		"Run on a Redis whose maxmemory-policy is not noeviction. Without it retryd refuses to start "+
			"there: an evicted key is a silently lost retry. A switch: =false turns it off again.",
		func(c *Config) *bool { return &c.RedisAllowEviction }),
	{
		group: "Store", flag: "redis-durability", env: "RETRYD_REDIS_DURABILITY", key: "redis_durability", arg: "MODE",
		help: "async: a report is acknowledged once Redis applied it (its persistence decides what a crash loses). " +
			"strict: also only once --redis-wait-replicas replicas have it (WAIT); else UNAVAILABLE. Not on Redis Cluster.",
		show: func(c *Config) string { return c.RedisDurability },
		set: func(c *Config, _ string, v []string) error {
			c.RedisDurability = strings.ToLower(strings.TrimSpace(v[0]))
			return checkOneOf(c.RedisDurability, redisDurabilities...)
		},
		check: func(c *Config) error { return checkOneOf(c.RedisDurability, redisDurabilities...) },
	},
	intSetting("Store", "redis-wait-replicas", "RETRYD_REDIS_WAIT_REPLICAS", "redis_wait_replicas",
		"Replicas that must confirm each report under --redis-durability strict.",
		func(c *Config) *int { return &c.RedisWaitReplicas }, checkWaitReplicas),
	durationSetting("Store", "redis-wait-timeout", "RETRYD_REDIS_WAIT_TIMEOUT", "redis_wait_timeout",
		"How long --redis-durability strict waits for the replicas before the report fails with UNAVAILABLE.",
		func(c *Config) *time.Duration { return &c.RedisWaitTimeout }, checkWaitTimeout),
	stringSetting("Store", "redis-tls-ca", "RETRYD_REDIS_TLS_CA", "redis_tls_ca", "FILE",
		"PEM bundle of the CAs that sign Redis's certificate (rediss:// URLs); \"\" trusts the system's.",
		func(c *Config) *string { return &c.RedisTLSCA }, noCheck),
	stringSetting("Store", "redis-tls-cert", "RETRYD_REDIS_TLS_CERT", "redis_tls_cert", "FILE",
		"PEM client certificate (chain) retryd shows a Redis with tls-auth-clients; with --redis-tls-key. Re-read when it changes.",
		func(c *Config) *string { return &c.RedisTLSCert }, noCheck),
	stringSetting("Store", "redis-tls-key", "RETRYD_REDIS_TLS_KEY", "redis_tls_key", "FILE",
		"PEM private key of --redis-tls-cert.",
		func(c *Config) *string { return &c.RedisTLSKey }, noCheck),

	// Retry policy.
	{
		group: "Retry policy", flag: "max-retries", env: "MAX_RETRIES", key: "max_retries", arg: "N",
		help: "Retries after the original attempt (3 = 4 attempts in all).",
		show: func(c *Config) string { return strconv.Itoa(c.Policy.MaxRetries) },
		set: func(c *Config, _ string, v []string) error {
			n, err := parseMaxRetries(v[0])
			c.Policy.MaxRetries = n
			return err
		},
	},
	{
		group: "Retry policy", flag: "retry-delays", env: "RETRY_DELAY_1..N", key: "retry_delays", arg: "LIST",
		help: "Delays before retry 1, 2, ... (comma-separated); beyond the list the last repeats. " +
			"In the environment one variable per delay, numbered from 1 without gaps (RETRY_DELAY_1=60).",
		kind: list,
		show: func(c *Config) string { return joinDurations(c.Policy.Delays) },
		set: func(c *Config, _ string, v []string) error {
			ds, err := parseDelays(v)
			if err == nil {
				c.Policy.Delays = ds
			}
			return err
		},
	},
	{
		group: "Retry policy", flag: "jitter", env: "RETRY_JITTER", key: "jitter", arg: "FRACTION",
		help: "Each delay is moved randomly by up to this fraction, in [0, 1) (0.1 = ±10%); 0 gives exact delays.",
		show: func(c *Config) string { return strconv.FormatFloat(c.Policy.Jitter, 'g', -1, 64) },
		set: func(c *Config, _ string, v []string) error {
			f, err := parseJitter(v[0])
			c.Policy.Jitter = f
			return err
		},
	},
	{
		group: "Retry policy", flag: "phase-max-retries", env: "<PHASE>_MAX_RETRIES", key: "max_retries", arg: "PHASE=N",
		help: "Max retries of one phase. EXTRACTION_MAX_RETRIES=5 sets phase extraction, " +
			"KG_INGEST_MAX_RETRIES sets kg_ingest: every upper-case variable ending in _MAX_RETRIES " +
			"(but RETRYD_*) is read as one.",
		kind: phaseScalar,
		show: func(*Config) string { return "--max-retries" },
		set: func(c *Config, phase string, v []string) error {
			n, err := parseMaxRetries(v[0])
			if err == nil {
				o := phaseOverride(c, phase)
				o.MaxRetries = &n
				c.Policy.Phases[phase] = o
			}
			return err
		},
	},
	{
		group: "Retry policy", flag: "phase-retry-delays", env: "<PHASE>_RETRY_DELAY_1..N", key: "retry_delays", arg: "PHASE=LIST",
		help: "Delays of one phase: --phase-retry-delays extraction=1m,10m. " +
			"In the environment EXTRACTION_RETRY_DELAY_1, _2, ...",
		kind: phaseList,
		show: func(*Config) string { return "--retry-delays" },
		set: func(c *Config, phase string, v []string) error {
			ds, err := parseDelays(v)
			if err == nil {
				o := phaseOverride(c, phase)
				o.Delays = ds
				c.Policy.Phases[phase] = o
			}
			return err
		},
	},
	{
		group: "Retry policy", flag: "retryable-errors", env: "RETRYD_RETRYABLE_ERRORS", key: "retryable_errors", arg: "LIST",
		help: "Error type names to retry, added to the specification's " + strings.Join(scheduler.DefaultRetryableTypes(), ", ") + ".",
		kind: list,
		show: func(c *Config) string { return strings.Join(c.Policy.RetryableTypes, ",") },
		set: func(c *Config, _ string, v []string) error {
			names, err := parseTypeNames(v)
			c.Policy.RetryableTypes = names
			return err
		},
	},
	{
		group: "Retry policy", flag: "non-retryable-errors", env: "RETRYD_NON_RETRYABLE_ERRORS", key: "non_retryable_errors", arg: "LIST",
		help: "Error type names to give up on, added to the specification's " + strings.Join(scheduler.DefaultNonRetryableTypes(), ", ") + ".",
		kind: list,
		show: func(c *Config) string { return strings.Join(c.Policy.NonRetryableTypes, ",") },
		set: func(c *Config, _ string, v []string) error {
			names, err := parseTypeNames(v)
			c.Policy.NonRetryableTypes = names
			return err
		},
	},

	// Authentication (internal/auth). Tokens themselves are never taken
	// from a flag, whose value any local user can read in the process
	// list, nor from the config file, which is often not a secret: only
	// from the environment or from token files.
	stringSetting("Authentication", "worker-token-file", "RETRYD_WORKER_TOKEN_FILE", "worker_token_file", "FILE",
		"File of worker bearer tokens, one per line (# comments); re-read when it changes. "+
			"A worker may call RetryService.",
		func(c *Config) *string { return &c.Auth.WorkerTokenFile }, noCheck),
	stringSetting("Authentication", "admin-token-file", "RETRYD_ADMIN_TOKEN_FILE", "admin_token_file", "FILE",
		"File of admin bearer tokens; an admin may call AdminService and RetryService.",
		func(c *Config) *string { return &c.Auth.AdminTokenFile }, noCheck),
	tokenSetting("RETRYD_WORKER_TOKENS", "Worker bearer tokens, comma-separated, added to the file's.",
		func(c *Config) *[]string { return &c.Auth.WorkerTokens }),
	tokenSetting("RETRYD_ADMIN_TOKENS", "Admin bearer tokens, comma-separated, added to the file's.",
		func(c *Config) *[]string { return &c.Auth.AdminTokens }),
	stringSetting("Authentication", "tls-cert", "RETRYD_TLS_CERT", "tls_cert", "FILE",
		"PEM certificate (chain) of the gRPC listener; with --tls-key, retryd serves TLS. Re-read when it changes.",
		func(c *Config) *string { return &c.Auth.TLSCert }, noCheck),
	stringSetting("Authentication", "tls-key", "RETRYD_TLS_KEY", "tls_key", "FILE",
		"PEM private key of --tls-cert.",
		func(c *Config) *string { return &c.Auth.TLSKey }, noCheck),
	stringSetting("Authentication", "tls-client-ca", "RETRYD_TLS_CLIENT_CA", "tls_client_ca", "FILE",
		"PEM CA bundle: a client certificate it signed authenticates (mutual TLS); "+
			"its role comes from --tls-admin-names and --tls-worker-names.",
		func(c *Config) *string { return &c.Auth.TLSClientCA }, noCheck),
	namesSetting("tls-admin-names", "RETRYD_TLS_ADMIN_NAMES", "tls_admin_names",
		"Client certificate names given the admin role: the subject CN or a DNS, URI or email SAN, "+
			"exact or as a prefix ending in * (spiffe://cluster.local/ns/ops/*).",
		func(c *Config) *[]string { return &c.Auth.TLSAdminNames }),
	namesSetting("tls-worker-names", "RETRYD_TLS_WORKER_NAMES", "tls_worker_names",
		`Client certificate names given the worker role; "" means every other certificate the client CA signed.`,
		func(c *Config) *[]string { return &c.Auth.TLSWorkerNames }),
	boolSetting("Authentication", "allow-unauthenticated", "RETRYD_ALLOW_UNAUTHENTICATED", "allow_unauthenticated",
		"Serve beyond loopback (0.0.0.0, a pod IP) without any credential configured. Without it retryd "+
			"refuses, as Redis's protected mode does: use it only when something else keeps strangers out. "+
			"A switch: --allow-unauthenticated=false turns it off again.",
		func(c *Config) *bool { return &c.Auth.AllowUnauthenticated }),

	// Logging.
	{
		group: "Logging", flag: "log-level", env: "RETRYD_LOG_LEVEL", key: "log_level", arg: "LEVEL",
		help: "debug, info, warn or error.",
		show: func(c *Config) string { return c.LogLevel },
		set: func(c *Config, _ string, v []string) error {
			c.LogLevel = strings.ToLower(strings.TrimSpace(v[0]))
			return checkOneOf(c.LogLevel, logLevels...)
		},
		check: func(c *Config) error { return checkOneOf(c.LogLevel, logLevels...) },
	},
	{
		group: "Logging", flag: "log-format", env: "RETRYD_LOG_FORMAT", key: "log_format", arg: "FORMAT",
		help: "text or json.",
		show: func(c *Config) string { return c.LogFormat },
		set: func(c *Config, _ string, v []string) error {
			c.LogFormat = strings.ToLower(strings.TrimSpace(v[0]))
			return checkOneOf(c.LogFormat, logFormats...)
		},
		check: func(c *Config) error { return checkOneOf(c.LogFormat, logFormats...) },
	},
}

var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

func stringSetting(group, flag, env, key, arg, help string, field func(*Config) *string, check func(string) error) setting {
	return setting{
		group: group, flag: flag, env: env, key: key, arg: arg, help: help,
		show: func(c *Config) string { return *field(c) },
		set: func(c *Config, _ string, v []string) error {
			*field(c) = strings.TrimSpace(v[0])
			return check(*field(c))
		},
		check: func(c *Config) error { return check(*field(c)) },
	}
}

// boolSetting is a switch: a flag without a value (--name, or --name=false
// to turn it off again), true/false in the environment and the file.
func boolSetting(group, flag, env, key, help string, field func(*Config) *bool) setting {
	return setting{
		group: group, flag: flag, env: env, key: key, help: help, boolean: true,
		show: func(c *Config) string { return strconv.FormatBool(*field(c)) },
		set: func(c *Config, _ string, v []string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v[0]))
			if err != nil {
				return errors.New("not true or false")
			}
			*field(c) = b
			return nil
		},
	}
}

func intSetting(group, flag, env, key, help string, field func(*Config) *int, check func(int) error) setting {
	return setting{
		group: group, flag: flag, env: env, key: key, arg: "N", help: help,
		show: func(c *Config) string { return strconv.Itoa(*field(c)) },
		set: func(c *Config, _ string, v []string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v[0]))
			if err != nil {
				return errors.New("not a whole number")
			}
			*field(c) = n
			return check(n)
		},
		check: func(c *Config) error { return check(*field(c)) },
	}
}

func durationSetting(group, flag, env, key, help string, field func(*Config) *time.Duration, check func(time.Duration) error) setting {
	return setting{
		group: group, flag: flag, env: env, key: key, arg: "DURATION", help: help,
		show: func(c *Config) string { return field(c).String() },
		set: func(c *Config, _ string, v []string) error {
			d, err := parseDuration(v[0])
			if err != nil {
				return err
			}
			*field(c) = d
			return check(d)
		},
		check: func(c *Config) error { return check(*field(c)) },
	}
}

// tokenSetting is an environment-only list of bearer tokens (no flag, no
// file key); errors never show a token.
func tokenSetting(env, help string, field func(*Config) *[]string) setting {
	return setting{
		group: "Authentication", env: env, arg: "LIST", kind: list, hidden: true,
		help: help + " Environment only: a flag would show them in the process list.",
		show: func(c *Config) string {
			if n := len(*field(c)); n > 0 {
				return fmt.Sprintf("(%d hidden)", n)
			}
			return ""
		},
		set: func(c *Config, _ string, v []string) error {
			toks := make([]string, len(v))
			for i, tok := range v {
				toks[i] = strings.TrimSpace(tok)
				if err := auth.CheckToken(toks[i]); err != nil {
					return &itemError{index: i, err: err}
				}
			}
			*field(c) = toks
			return nil
		},
	}
}

// namesSetting is a list of client certificate name patterns.
func namesSetting(flag, env, key, help string, field func(*Config) *[]string) setting {
	return setting{
		group: "Authentication", flag: flag, env: env, key: key, arg: "LIST", kind: list, help: help,
		show: func(c *Config) string { return strings.Join(*field(c), ",") },
		set: func(c *Config, _ string, v []string) error {
			names := make([]string, len(v))
			for i, n := range v {
				names[i] = strings.TrimSpace(n)
				if err := auth.CheckNamePattern(names[i]); err != nil {
					return &itemError{index: i, err: err}
				}
			}
			*field(c) = names
			return nil
		},
	}
}

func noCheck(string) error { return nil }

// name is how messages call the setting: its flag, or for the
// environment-only ones its variable.
func (s *setting) name() string {
	if s.flag == "" {
		return s.env
	}
	return "--" + s.flag
}

// phaseOverride returns the phase's override so far, creating the map.
func phaseOverride(c *Config, phase string) scheduler.PhaseOverride {
	if c.Policy.Phases == nil {
		c.Policy.Phases = make(map[string]scheduler.PhaseOverride)
	}
	return c.Policy.Phases[phase]
}

func settingByFlag(name string) *setting {
	for i := range settings {
		if settings[i].flag == name {
			return &settings[i]
		}
	}
	panic("config: no setting for flag " + name)
}

// parseDuration reads a bare number as seconds (60, 1.5) and anything else
// as Go syntax (250ms, 1h30m).
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if isDecimal(s) {
		s += "s" // exact decimal arithmetic, and ParseDuration's range check
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("not a duration (a number of seconds such as 60, or Go syntax such as 250ms or 1h30m)")
	}
	return d, nil
}

// isDecimal reports whether s is an optionally signed decimal number
// (digits, at most one '.').
func isDecimal(s string) bool {
	s = strings.TrimPrefix(s, "-")
	digits, dots := 0, 0
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digits++
		case r == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

func parseMaxRetries(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, errors.New("not a whole number")
	}
	if n < 0 || n > scheduler.MaxRetriesLimit {
		return n, fmt.Errorf("must be 0 to %d", scheduler.MaxRetriesLimit)
	}
	return n, nil
}

func parseJitter(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, errors.New("not a number")
	}
	if !(f >= 0 && f < 1) {
		return f, errors.New("must be at least 0 and below 1 (0.1 = ±10%)")
	}
	return f, nil
}

func parseDelays(items []string) ([]time.Duration, error) {
	if len(items) == 0 {
		return nil, errors.New("at least one delay is required")
	}
	ds := make([]time.Duration, len(items))
	for i, s := range items {
		d, err := parseDuration(s)
		if err == nil {
			err = scheduler.ValidateDelay(d)
		}
		if err != nil {
			return nil, &itemError{index: i, err: err}
		}
		ds[i] = d
	}
	return ds, nil
}

func parseTypeNames(items []string) ([]string, error) {
	names := make([]string, 0, len(items))
	for i, s := range items {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, &itemError{index: i, err: errors.New("empty type name")}
		}
		if strings.ContainsAny(s, " \t\r\n") {
			return nil, &itemError{index: i, err: errors.New("a type name has no white space")}
		}
		if !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	return names, nil
}

// parseBytes reads a byte count, optionally with a KiB or MiB suffix.
func parseBytes(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for suffix, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20} {
		if rest, ok := strings.CutSuffix(s, suffix); ok {
			s, mult = strings.TrimSpace(rest), m
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, errors.New("not a byte count (a whole number, optionally with KiB or MiB)")
	}
	if n < 0 || n > MaxPayloadLimit/mult {
		return 0, fmt.Errorf("must be 1 to %d bytes (64 MiB)", MaxPayloadLimit)
	}
	return n * mult, nil
}

func joinDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return strings.Join(parts, ",")
}

// splitList splits a comma-separated flag or environment value.
func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(s, ",")
}
