package config

import (
	"bytes"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/retryd/retryd/internal/auth"
	"github.com/retryd/retryd/scheduler"
)

func intPtr(n int) *int { return &n }

// loadT runs load with a help buffer.
func loadT(t *testing.T, args, environ []string) (Config, error) {
	t.Helper()
	var help bytes.Buffer
	c, err := load(args, environ, &help)
	if err == nil {
		require.Empty(t, help.String(), "help written without --help")
	}
	return c, err
}

// writeFile writes a config file into a fresh temporary directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "retryd.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func requireConfig(t *testing.T, want, got Config) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("config mismatch (-want +got):\n%s", diff)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := loadT(t, nil, nil)
	require.NoError(t, err)
	requireConfig(t, Default(), c)
	require.NoError(t, c.Validate())

	require.Equal(t, "127.0.0.1:50051", c.Listen)
	require.Empty(t, c.RedisURL)
	require.Equal(t, "retryd", c.RedisPrefix)
	require.Equal(t, "./retryd-data", c.DataDir)
	require.Empty(t, c.MetricsListen)
	require.Equal(t, 5*time.Minute, c.LeaseDuration)
	require.Equal(t, 15*time.Second, c.HeartbeatInterval)
	require.Equal(t, 20*time.Second, c.ShutdownGrace)
	require.Equal(t, 30*time.Second, c.KeepaliveTime)
	require.Equal(t, 10*time.Second, c.KeepaliveTimeout)
	require.Equal(t, "auto", c.TimeSource)
	require.Zero(t, c.TestClockSkew)
	require.Equal(t, 256*1024, c.MaxPayloadBytes)
	require.Equal(t, 8*24*time.Hour, c.JobRetention)
	require.Equal(t, 30*24*time.Hour, c.StatsRetention)
	require.Equal(t, 1_000_000, c.MaxTerminalJobs)
	require.False(t, c.RedisAllowEviction)
	require.Equal(t, "async", c.RedisDurability)
	require.Equal(t, 1, c.RedisWaitReplicas)
	require.Equal(t, time.Second, c.RedisWaitTimeout)
	require.Equal(t, "info", c.LogLevel)
	require.Equal(t, "text", c.LogFormat)
	require.Equal(t, scheduler.DefaultPolicyConfig(), c.Policy)
}

func TestExampleFile(t *testing.T) {
	t.Parallel()
	const path = "testdata/example.yaml"
	c, err := loadT(t, []string{"--config", path}, nil)
	require.NoError(t, err)

	want := Default()
	want.ConfigFile = path
	want.Listen = "0.0.0.0:50051"
	want.MetricsListen = "127.0.0.1:9090"
	want.HeartbeatInterval = 10 * time.Second
	want.LeaseDuration = 10 * time.Minute
	want.MaxPayloadBytes = 512 * 1024
	want.ShutdownGrace = 30 * time.Second
	want.KeepaliveTime = 20 * time.Second
	want.KeepaliveTimeout = 5 * time.Second
	want.TimeSource = "local"
	want.RedisURL = "rediss://redis.internal:6380/0"
	want.RedisPrefix = "retryd-staging"
	want.DataDir = "/var/lib/retryd"
	want.JobRetention = 14 * 24 * time.Hour
	want.StatsRetention = 90 * 24 * time.Hour
	want.MaxTerminalJobs = 250_000
	want.RedisAllowEviction = true
	want.RedisDurability = "strict"
	want.RedisWaitReplicas = 2
	want.RedisWaitTimeout = 500 * time.Millisecond
	want.MetricsPprof = true
	want.RedisTLSCA = "/run/secrets/redis/ca.crt"
	want.RedisTLSCert = "/run/secrets/redis/tls.crt"
	want.RedisTLSKey = "/run/secrets/redis/tls.key"
	want.Policy.Jitter = 0.2
	want.Policy.RetryableTypes = []string{"DeadlockDetected", "SerializationFailure"}
	want.Policy.NonRetryableTypes = []string{"QuotaExceeded"}
	want.Policy.Phases = map[string]scheduler.PhaseOverride{
		"extraction": {MaxRetries: intPtr(5)},
		"kg_ingest":  {MaxRetries: intPtr(4), Delays: []time.Duration{30 * time.Second, 2 * time.Minute}},
	}
	want.LogLevel = "debug"
	want.LogFormat = "json"
	want.Auth = auth.Config{
		WorkerTokenFile: "/run/secrets/retryd/worker-tokens",
		AdminTokenFile:  "/run/secrets/retryd/admin-tokens",
		TLSCert:         "/run/secrets/retryd/tls.crt",
		TLSKey:          "/run/secrets/retryd/tls.key",
		TLSClientCA:     "/run/secrets/retryd/client-ca.crt",
		TLSAdminNames:   []string{"spiffe://cluster.local/ns/ops/*"},
		TLSWorkerNames:  []string{"spiffe://cluster.local/ns/pipeline/*"},
	}
	requireConfig(t, want, c)

	// The policy it describes builds.
	_, err = scheduler.NewPolicy(c.Policy, nil)
	require.NoError(t, err)
}

func TestExampleFileShowsEveryKey(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/example.yaml")
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal(data, &doc))

	var want, wantPhase []string
	for _, s := range settings {
		switch {
		case s.kind == phaseScalar || s.kind == phaseList:
			wantPhase = append(wantPhase, s.key)
		case s.key != "":
			want = append(want, s.key)
		}
	}
	want = append(want, "phases")
	var got []string
	for k := range doc {
		got = append(got, k)
	}
	require.ElementsMatch(t, want, got)

	phaseKeys := map[string]bool{}
	for _, p := range doc["phases"].(map[string]any) {
		for k := range p.(map[string]any) {
			phaseKeys[k] = true
		}
	}
	for _, k := range wantPhase {
		require.True(t, phaseKeys[k], "no phase in the example sets %s", k)
	}
}

// sourceCase is one setting given a raw value, and what it must produce.
type sourceCase struct {
	flag string
	raw  string
	want func(c *Config)
}

// needs are the flags a setting is only valid with (--tls-key for
// --tls-cert), given as flags in each of its subtests; its want sets them too.
var needs = map[string][]string{
	"tls-cert":         {"--tls-key", "k.pem"},
	"tls-key":          {"--tls-cert", "c.pem"},
	"tls-client-ca":    withTLS,
	"tls-admin-names":  withClientCA,
	"tls-worker-names": withClientCA,
	"redis-tls-ca":     withRedisTLS,
	"metrics-pprof":    {"--metrics-listen", ":9100"},
	"redis-tls-cert":   append([]string{"--redis-tls-key", "rk.pem"}, withRedisTLS...),
	"redis-tls-key":    append([]string{"--redis-tls-cert", "rc.pem"}, withRedisTLS...),
}

var (
	withTLS      = []string{"--tls-cert", "c.pem", "--tls-key", "k.pem"}
	withClientCA = append([]string{"--tls-client-ca", "ca.pem"}, withTLS...)
	setTLS       = func(c *Config) { c.Auth.TLSCert, c.Auth.TLSKey = "c.pem", "k.pem" }
	setClientCA  = func(c *Config) { setTLS(c); c.Auth.TLSClientCA = "ca.pem" }
	withRedisTLS = []string{"--redis-url", "rediss://redis:6380"}
	setRedisTLS  = func(c *Config) { c.RedisURL = "rediss://redis:6380" }
)

// everySetting gives each scalar and list setting a non-default value.
var everySetting = []sourceCase{
	{"listen", "0.0.0.0:6000", func(c *Config) { c.Listen = "0.0.0.0:6000" }},
	{"metrics-listen", ":9100", func(c *Config) { c.MetricsListen = ":9100" }},
	{"metrics-pprof", "true", func(c *Config) { c.MetricsListen = ":9100"; c.MetricsPprof = true }},
	{"heartbeat-interval", "2.5", func(c *Config) { c.HeartbeatInterval = 2500 * time.Millisecond }},
	{"lease-duration", "90s", func(c *Config) { c.LeaseDuration = 90 * time.Second }},
	{"max-payload-bytes", "1MiB", func(c *Config) { c.MaxPayloadBytes = 1 << 20 }},
	{"shutdown-grace", "0", func(c *Config) { c.ShutdownGrace = 0 }},
	{"keepalive-time", "20s", func(c *Config) { c.KeepaliveTime = 20 * time.Second }},
	{"keepalive-timeout", "2", func(c *Config) { c.KeepaliveTimeout = 2 * time.Second }},
	{"time-source", "Local", func(c *Config) { c.TimeSource = "local" }},
	{"redis-url", "rediss://:pw@redis.example:6380/2", func(c *Config) { c.RedisURL = "rediss://:pw@redis.example:6380/2" }},
	{"redis-prefix", "rq", func(c *Config) { c.RedisPrefix = "rq" }},
	{"data-dir", "/tmp/x", func(c *Config) { c.DataDir = "/tmp/x" }},
	{"job-retention", "1h", func(c *Config) { c.JobRetention = time.Hour }},
	{"stats-retention", "3600", func(c *Config) { c.StatsRetention = time.Hour }},
	{"max-terminal-jobs", "0", func(c *Config) { c.MaxTerminalJobs = 0 }},
	{"redis-allow-eviction", "true", func(c *Config) { c.RedisAllowEviction = true }},
	{"redis-durability", "Strict", func(c *Config) { c.RedisDurability = "strict" }},
	{"redis-wait-replicas", "3", func(c *Config) { c.RedisWaitReplicas = 3 }},
	{"redis-wait-timeout", "250ms", func(c *Config) { c.RedisWaitTimeout = 250 * time.Millisecond }},
	{"redis-tls-ca", "/tls/redis-ca.pem", func(c *Config) { setRedisTLS(c); c.RedisTLSCA = "/tls/redis-ca.pem" }},
	{"redis-tls-cert", "/tls/rc.pem", func(c *Config) { setRedisTLS(c); c.RedisTLSCert, c.RedisTLSKey = "/tls/rc.pem", "rk.pem" }},
	{"redis-tls-key", "/tls/rk.pem", func(c *Config) { setRedisTLS(c); c.RedisTLSCert, c.RedisTLSKey = "rc.pem", "/tls/rk.pem" }},
	{"max-retries", "7", func(c *Config) { c.Policy.MaxRetries = 7 }},
	{"retry-delays", "1,250ms,2m", func(c *Config) {
		c.Policy.Delays = []time.Duration{time.Second, 250 * time.Millisecond, 2 * time.Minute}
	}},
	{"jitter", "0", func(c *Config) { c.Policy.Jitter = 0 }},
	{"retryable-errors", "A, b.B,A", func(c *Config) { c.Policy.RetryableTypes = []string{"A", "b.B"} }},
	{"non-retryable-errors", "Quota", func(c *Config) { c.Policy.NonRetryableTypes = []string{"Quota"} }},
	{"log-level", "WARN", func(c *Config) { c.LogLevel = "warn" }},
	{"log-format", "json", func(c *Config) { c.LogFormat = "json" }},
	{"worker-token-file", "/run/w", func(c *Config) { c.Auth.WorkerTokenFile = "/run/w" }},
	{"admin-token-file", "/run/a", func(c *Config) { c.Auth.AdminTokenFile = "/run/a" }},
	{"tls-cert", "/tls/c.pem", func(c *Config) { c.Auth.TLSCert, c.Auth.TLSKey = "/tls/c.pem", "k.pem" }},
	{"tls-key", "/tls/k.pem", func(c *Config) { c.Auth.TLSCert, c.Auth.TLSKey = "c.pem", "/tls/k.pem" }},
	{"tls-client-ca", "/tls/ca.pem", func(c *Config) { setTLS(c); c.Auth.TLSClientCA = "/tls/ca.pem" }},
	{"tls-admin-names", "ops, spiffe://x/ns/ops/*", func(c *Config) {
		setClientCA(c)
		c.Auth.TLSAdminNames = []string{"ops", "spiffe://x/ns/ops/*"}
	}},
	{"tls-worker-names", "w1,w2", func(c *Config) { setClientCA(c); c.Auth.TLSWorkerNames = []string{"w1", "w2"} }},
	{"allow-unauthenticated", "true", func(c *Config) { c.Auth.AllowUnauthenticated = true }},
}

func TestEverySettingFromEverySource(t *testing.T) {
	t.Parallel()
	// The table above must cover every setting that has a plain value.
	var covered []string
	for _, sc := range everySetting {
		covered = append(covered, sc.flag)
	}
	for _, s := range settings {
		if s.kind == scalar || s.kind == list {
			// --config selects the file; the environment-only token lists
			// have TestTokensFromTheEnvironment.
			if s.flag != "config" && s.flag != "" {
				require.Contains(t, covered, s.flag, "add --%s to everySetting", s.flag)
			}
		}
	}

	for _, sc := range everySetting {
		s := settingByFlag(sc.flag)
		want := Default()
		sc.want(&want)
		items := splitList(sc.raw)
		with := needs[sc.flag]

		t.Run(sc.flag+"/flag", func(t *testing.T) {
			t.Parallel()
			if !s.boolean { // a switch takes no separate value
				c, err := loadT(t, append([]string{"--" + sc.flag, sc.raw}, with...), nil)
				require.NoError(t, err)
				requireConfig(t, want, c)
			} else {
				c, err := loadT(t, append([]string{"--" + sc.flag}, with...), nil)
				require.NoError(t, err)
				requireConfig(t, want, c)
			}
			// The single-dash and = forms of the flag package work too.
			c, err := loadT(t, append([]string{"-" + sc.flag + "=" + sc.raw}, with...), nil)
			require.NoError(t, err)
			requireConfig(t, want, c)
		})
		t.Run(sc.flag+"/env", func(t *testing.T) {
			t.Parallel()
			var env []string
			if sc.flag == "retry-delays" {
				for i, it := range items {
					env = append(env, "RETRY_DELAY_"+strconv.Itoa(i+1)+"="+it)
				}
			} else {
				env = []string{s.env + "=" + sc.raw}
			}
			c, err := loadT(t, with, env)
			require.NoError(t, err)
			requireConfig(t, want, c)
		})
		t.Run(sc.flag+"/file", func(t *testing.T) {
			t.Parallel()
			var val any = sc.raw
			if s.kind == list {
				val = items
			}
			out, err := yaml.Marshal(map[string]any{s.key: val})
			require.NoError(t, err)
			path := writeFile(t, string(out))
			c, err := loadT(t, append([]string{"--config", path}, with...), nil)
			require.NoError(t, err)
			want := want
			want.ConfigFile = path
			requireConfig(t, want, c)
		})
	}
}

func TestPhaseSettings(t *testing.T) {
	t.Parallel()
	secs := func(ns ...int) []time.Duration {
		var ds []time.Duration
		for _, n := range ns {
			ds = append(ds, time.Duration(n)*time.Second)
		}
		return ds
	}
	tests := []struct {
		name string
		args []string
		env  []string
		file string
		want map[string]scheduler.PhaseOverride
	}{
		{"the specification's environment names", nil,
			[]string{"EXTRACTION_MAX_RETRIES=5", "CHUNKING_MAX_RETRIES=3", "KG_INGEST_MAX_RETRIES=3"}, "",
			map[string]scheduler.PhaseOverride{
				"extraction": {MaxRetries: intPtr(5)},
				"chunking":   {MaxRetries: intPtr(3)},
				"kg_ingest":  {MaxRetries: intPtr(3)},
			}},
		{"per-phase delays from the environment", nil,
			[]string{"KG_INGEST_RETRY_DELAY_2=5", "KG_INGEST_RETRY_DELAY_1=1", "KG_INGEST_RETRY_DELAY_3=250ms"}, "",
			map[string]scheduler.PhaseOverride{"kg_ingest": {Delays: []time.Duration{time.Second, 5 * time.Second, 250 * time.Millisecond}}}},
		{"flags, repeated; the last value of a phase wins",
			[]string{"--phase-max-retries", "extraction=5", "--phase-max-retries", "ocr=0", "--phase-retry-delays", "extraction=1s,2",
				"--phase-max-retries", "extraction=6"}, nil, "",
			map[string]scheduler.PhaseOverride{
				"extraction": {MaxRetries: intPtr(6), Delays: secs(1, 2)},
				"ocr":        {MaxRetries: intPtr(0)},
			}},
		{"file", nil, nil, "phases:\n  extraction:\n    max_retries: 5\n    retry_delays: [1, 2s]\n  chunking: {}\n  ocr:\n",
			map[string]scheduler.PhaseOverride{"extraction": {MaxRetries: intPtr(5), Delays: secs(1, 2)}}},
		{"the sources merge per field, the stronger winning",
			[]string{"--phase-max-retries", "extraction=9"},
			[]string{"EXTRACTION_MAX_RETRIES=7", "EXTRACTION_RETRY_DELAY_1=3", "CHUNKING_MAX_RETRIES=2"},
			"phases:\n  extraction:\n    max_retries: 5\n    retry_delays: [1, 2]\n  chunking:\n    retry_delays: [4]\n  ocr:\n    max_retries: 1\n",
			map[string]scheduler.PhaseOverride{
				"extraction": {MaxRetries: intPtr(9), Delays: secs(3)},
				"chunking":   {MaxRetries: intPtr(2), Delays: secs(4)},
				"ocr":        {MaxRetries: intPtr(1)},
			}},
		{"RETRYD_ names are never phase settings", nil,
			[]string{"RETRYD_SERVICE_MAX_RETRIES=x", "RETRYD_FOO_RETRY_DELAY_1=x"}, "", nil},
		{"lower-case variable names are not read", nil, []string{"extraction_MAX_RETRIES=x"}, "", nil},
		{"the global names are not phases", nil, []string{"MAX_RETRIES=4", "RETRY_DELAY_1=2"}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, tt.file)}, args...)
			}
			c, err := loadT(t, args, tt.env)
			require.NoError(t, err)
			if diff := cmp.Diff(tt.want, c.Policy.Phases, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("phases (-want +got):\n%s", diff)
			}
			_, err = scheduler.NewPolicy(c.Policy, nil)
			require.NoError(t, err)
		})
	}
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "max_retries: 1\nretry_delays: [1, 2, 3]\njitter: 0.3\nlisten: 127.0.0.1:1\nretryable_errors: [FromFile]\n")
	other := writeFile(t, "max_retries: 8\n")
	tests := []struct {
		name string
		args []string
		env  []string
		want func(c *Config)
	}{
		{"file over defaults", []string{"--config", file}, nil, func(c *Config) {
			c.ConfigFile = file
			c.Policy.MaxRetries = 1
			c.Policy.Delays = []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
			c.Policy.Jitter = 0.3
			c.Listen = "127.0.0.1:1"
			c.Policy.RetryableTypes = []string{"FromFile"}
		}},
		{"environment over file; a list is replaced whole", nil,
			[]string{"RETRYD_CONFIG=" + file, "MAX_RETRIES=2", "RETRY_DELAY_1=9", "RETRYD_RETRYABLE_ERRORS=FromEnv"}, func(c *Config) {
				c.ConfigFile = file
				c.Policy.MaxRetries = 2
				c.Policy.Delays = []time.Duration{9 * time.Second}
				c.Policy.Jitter = 0.3
				c.Listen = "127.0.0.1:1"
				c.Policy.RetryableTypes = []string{"FromEnv"}
			}},
		{"flags over environment over file",
			[]string{"--max-retries", "4", "--retry-delays", "7", "--listen", "127.0.0.1:3", "--retryable-errors", "FromFlag"},
			[]string{"RETRYD_CONFIG=" + file, "MAX_RETRIES=2", "RETRY_DELAY_1=9", "RETRYD_LISTEN=127.0.0.1:2", "RETRY_JITTER=0"},
			func(c *Config) {
				c.ConfigFile = file
				c.Policy.MaxRetries = 4
				c.Policy.Delays = []time.Duration{7 * time.Second}
				c.Policy.Jitter = 0
				c.Listen = "127.0.0.1:3"
				c.Policy.RetryableTypes = []string{"FromFlag"}
			}},
		{"--config over RETRYD_CONFIG", []string{"--config", other}, []string{"RETRYD_CONFIG=" + file}, func(c *Config) {
			c.ConfigFile = other
			c.Policy.MaxRetries = 8
		}},
		{"an empty variable is unset", []string{"--config", file}, []string{"MAX_RETRIES=", "RETRYD_LISTEN=", "RETRY_DELAY_1="}, func(c *Config) {
			c.ConfigFile = file
			c.Policy.MaxRetries = 1
			c.Policy.Delays = []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
			c.Policy.Jitter = 0.3
			c.Listen = "127.0.0.1:1"
			c.Policy.RetryableTypes = []string{"FromFile"}
		}},
		{"a flag set to empty clears a value", []string{"--metrics-listen", ""}, []string{"RETRYD_METRICS_LISTEN=:9100"}, func(*Config) {}},
		{"the first of duplicate variables wins, as with os.Getenv", nil, []string{"MAX_RETRIES=5", "MAX_RETRIES=6", "NOEQUALS", "=x"}, func(c *Config) {
			c.Policy.MaxRetries = 5
		}},
		{"the last of repeated flags wins", []string{"--max-retries", "1", "--max-retries", "2"}, nil, func(c *Config) {
			c.Policy.MaxRetries = 2
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadT(t, tt.args, tt.env)
			require.NoError(t, err)
			want := Default()
			tt.want(&want)
			requireConfig(t, want, c)
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		env  []string
		file string // written and passed with --config when set
		want string // the whole message, or (with a trailing "…") its start
	}{
		// Flags.
		{"unknown flag", []string{"--nope"}, nil, "", "flag provided but not defined: -nope (see retryd --help)"},
		{"flag without value", []string{"--listen"}, nil, "", "flag needs an argument: -listen (see retryd --help)"},
		{"positional argument", []string{"serve"}, nil, "", `unexpected argument "serve": retryd takes flags only (see retryd --help)`},
		{"max retries not a number", []string{"--max-retries", "three"}, nil, "", `--max-retries: invalid value "three": not a whole number`},
		{"max retries negative", nil, []string{"MAX_RETRIES=-1"}, "", `MAX_RETRIES: invalid value "-1": must be 0 to 1000`},
		{"max retries too large", []string{"--max-retries", "1001"}, nil, "", `--max-retries: invalid value "1001": must be 0 to 1000`},
		{"delay not a duration", []string{"--retry-delays", "60,soon"}, nil, "", `--retry-delays (item 2): invalid value "soon": not a duration (a number of seconds such as 60, or Go syntax such as 250ms or 1h30m)`},
		{"empty delay item", []string{"--retry-delays", "60,,900"}, nil, "", `--retry-delays (item 2): invalid value "": not a duration…`},
		{"no delays", []string{"--retry-delays", ""}, nil, "", `--retry-delays: at least one delay is required`},
		{"zero delay", []string{"--retry-delays", "0"}, nil, "", `--retry-delays: invalid value "0": delay 0s is outside (0s, 720h0m0s]`},
		{"negative delay", []string{"--retry-delays", "-5"}, nil, "", `--retry-delays: invalid value "-5": delay -5s is outside…`},
		{"delay over 30 days", []string{"--retry-delays", "721h"}, nil, "", `--retry-delays: invalid value "721h": delay 721h0m0s is outside…`},
		{"delay overflowing", []string{"--retry-delays", "99999999999999999999"}, nil, "", `--retry-delays: invalid value "99999999999999999999": not a duration…`},
		{"jitter not a number", []string{"--jitter", "lots"}, nil, "", `--jitter: invalid value "lots": not a number`},
		{"jitter 1", []string{"--jitter", "1"}, nil, "", `--jitter: invalid value "1": must be at least 0 and below 1 (0.1 = ±10%)`},
		{"jitter negative", nil, []string{"RETRY_JITTER=-0.1"}, "", `RETRY_JITTER: invalid value "-0.1": must be at least 0…`},
		{"jitter NaN", nil, []string{"RETRY_JITTER=NaN"}, "", `RETRY_JITTER: invalid value "NaN": must be at least 0…`},
		{"phase flag without =", []string{"--phase-max-retries", "extraction"}, nil, "", `--phase-max-retries: invalid value "extraction": expected PHASE=N`},
		{"phase flag with a bad phase", []string{"--phase-max-retries", "Extraction=5"}, nil, "", `--phase-max-retries: invalid value "Extraction=5": phase name "Extraction" may only hold…`},
		{"phase flag with an empty phase", []string{"--phase-retry-delays", "=1s"}, nil, "", `--phase-retry-delays: invalid value "=1s": phase name is empty`},
		{"phase flag with a bad number", []string{"--phase-max-retries", "extraction=x"}, nil, "", `--phase-max-retries extraction: invalid value "x": not a whole number`},
		{"phase flag with a bad delay", []string{"--phase-retry-delays", "extraction=1s,x"}, nil, "", `--phase-retry-delays extraction (item 2): invalid value "x": not a duration…`},
		{"listen without port", []string{"--listen", "localhost"}, nil, "", `--listen: invalid value "localhost": not host:port: address localhost: missing port in address`},
		{"listen with a bad port", nil, []string{"RETRYD_LISTEN=:99999"}, "", `RETRYD_LISTEN: invalid value ":99999": port "99999" is not a number from 0 to 65535`},
		{"metrics listen", []string{"--metrics-listen", "9100"}, nil, "", `--metrics-listen: invalid value "9100": not host:port…`},
		{"redis URL scheme, password hidden", []string{"--redis-url", "http://user:hunter2@h:1"}, nil, "",
			`--redis-url: invalid value "http://user:xxxxx@h:1": redisstore: Redis URL "http://user:xxxxx@h:1": unknown scheme "http" (want redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)`},
		{"unparsable redis URL, password hidden", nil, []string{"RETRYD_REDIS_URL=redis://u:hunter2@[::1"}, "",
			`RETRYD_REDIS_URL: invalid value "(unparsable URL, hidden: it may hold a password)": not a URL`},
		{"redis prefix with braces", []string{"--redis-prefix", "a{b}"}, nil, "", `--redis-prefix: invalid value "a{b}": must not contain '{', '}' or white space`},
		{"empty redis prefix", []string{"--redis-prefix", ""}, nil, "", `--redis-prefix: invalid value "": must not be empty`},
		{"empty data dir", []string{"--data-dir", " "}, nil, "", `--data-dir: invalid value " ": must not be empty`},
		{"lease duration zero", []string{"--lease-duration", "0"}, nil, "", `--lease-duration: invalid value "0": must be positive`},
		{"lease duration not a duration", nil, []string{"RETRYD_LEASE_DURATION=5 minutes"}, "", `RETRYD_LEASE_DURATION: invalid value "5 minutes": not a duration…`},
		{"heartbeat negative", []string{"--heartbeat-interval", "-1s"}, nil, "", `--heartbeat-interval: invalid value "-1s": must be positive`},
		{"shutdown grace negative", []string{"--shutdown-grace", "-1"}, nil, "", `--shutdown-grace: invalid value "-1": must not be negative`},
		{"job retention zero", []string{"--job-retention", "0s"}, nil, "", `--job-retention: invalid value "0s": must be positive`},
		{"stats retention under an hour", []string{"--stats-retention", "30m"}, nil, "", `--stats-retention: invalid value "30m": must be at least 1h0m0s (the counters are hourly)`},
		{"payload zero", []string{"--max-payload-bytes", "0"}, nil, "", `--max-payload-bytes: invalid value "0": must be 1 to 67108864 bytes (64 MiB)`},
		{"payload too large", nil, []string{"RETRYD_MAX_PAYLOAD_BYTES=65MiB"}, "", `RETRYD_MAX_PAYLOAD_BYTES: invalid value "65MiB": must be 1 to 67108864 bytes (64 MiB)`},
		{"payload not a number", []string{"--max-payload-bytes", "1GB"}, nil, "", `--max-payload-bytes: invalid value "1GB": not a byte count (a whole number, optionally with KiB or MiB)`},
		{"log level", []string{"--log-level", "verbose"}, nil, "", `--log-level: invalid value "verbose": must be one of debug, info, warn, error`},
		{"log format", nil, []string{"RETRYD_LOG_FORMAT=xml"}, "", `RETRYD_LOG_FORMAT: invalid value "xml": must be one of text, json`},
		{"empty type name", []string{"--retryable-errors", "A,,B"}, nil, "", `--retryable-errors (item 2): invalid value "": empty type name`},
		{"type name with a space", nil, []string{"RETRYD_NON_RETRYABLE_ERRORS=Bad Name"}, "", `RETRYD_NON_RETRYABLE_ERRORS: invalid value "Bad Name": a type name has no white space`},
		{"a retryable name that a non-retryable one shadows", []string{"--retryable-errors", "ValidationError"}, nil, "",
			`retry policy: RetryableTypes[0]: "ValidationError" would never apply…`},
		{"LeaseExpired made non-retryable", nil, []string{"RETRYD_NON_RETRYABLE_ERRORS=LeaseExpired"}, "",
			`retry policy: NonRetryableTypes[0]: "LeaseExpired" cannot be non-retryable…`},

		// The environment's numbered and per-phase names.
		{"a gap in RETRY_DELAY_N", nil, []string{"RETRY_DELAY_1=60", "RETRY_DELAY_3=900"}, "",
			"RETRY_DELAY_3 is set but RETRY_DELAY_2 is not: number the delays from 1 without gaps"},
		{"RETRY_DELAY_N not from 1", nil, []string{"RETRY_DELAY_2=60"}, "",
			"RETRY_DELAY_2 is set but RETRY_DELAY_1 is not: number the delays from 1 without gaps"},
		{"an empty RETRY_DELAY_N makes a gap", nil, []string{"RETRY_DELAY_1=60", "RETRY_DELAY_2=", "RETRY_DELAY_3=900"}, "",
			"RETRY_DELAY_3 is set but RETRY_DELAY_2 is not…"},
		{"RETRY_DELAY_0", nil, []string{"RETRY_DELAY_0=60"}, "", "RETRY_DELAY_0: the delay number must be 1, 2, 3, ... (no 0, no leading zeros)"},
		{"RETRY_DELAY_01", nil, []string{"RETRY_DELAY_01=60"}, "", "RETRY_DELAY_01: the delay number must be 1, 2, 3, ... (no 0, no leading zeros)"},
		{"a bad RETRY_DELAY_N", nil, []string{"RETRY_DELAY_1=60", "RETRY_DELAY_2=5 min"}, "", `RETRY_DELAY_2: invalid value "5 min": not a duration…`},
		{"a gap in a phase's delays", nil, []string{"EXTRACTION_RETRY_DELAY_2=60"}, "",
			"EXTRACTION_RETRY_DELAY_2 is set but EXTRACTION_RETRY_DELAY_1 is not: number the delays from 1 without gaps"},
		{"a bad phase delay", nil, []string{"KG_INGEST_RETRY_DELAY_1=x"}, "", `KG_INGEST_RETRY_DELAY_1: invalid value "x": not a duration…`},
		{"a bad phase max retries", nil, []string{"FOO_MAX_RETRIES=many"}, "", `FOO_MAX_RETRIES: invalid value "many": not a whole number`},
		{"RETRYD_MAX_RETRIES", nil, []string{"RETRYD_MAX_RETRIES=5"}, "", "RETRYD_MAX_RETRIES is not a retryd setting: did you mean MAX_RETRIES? (see retryd --help)"},
		{"RETRYD_JITTER", nil, []string{"RETRYD_JITTER=0"}, "", "RETRYD_JITTER is not a retryd setting: did you mean RETRY_JITTER?…"},
		{"RETRYD_RETRY_DELAY_1", nil, []string{"RETRYD_RETRY_DELAY_1=5"}, "", "RETRYD_RETRY_DELAY_1 is not a retryd setting: did you mean RETRY_DELAY_1?…"},

		// The config file.
		{"missing file", []string{"--config", "/nonexistent/retryd.yaml"}, nil, "",
			"config file (--config / RETRYD_CONFIG): open /nonexistent/retryd.yaml: no such file or directory"},
		{"unknown key", nil, nil, "listen: :1\nmax_retires: 5\n", "config file FILE: yaml: unmarshal errors:\n  line 2: field max_retires not found…"},
		{"unknown phase key", nil, nil, "phases:\n  extraction:\n    delays: [1]\n", "config file FILE: yaml: unmarshal errors:\n  line 3: field delays not found…"},
		{"bad phase name", nil, nil, "phases:\n  Extraction:\n    max_retries: 5\n", `config file FILE: phases: phase name "Extraction" may only hold…`},
		{"bad value", nil, nil, "max_retries: lots\n", `config file FILE: max_retries: invalid value "lots": not a whole number`},
		{"bad phase value", nil, nil, "phases:\n  extraction:\n    max_retries: -1\n", `config file FILE: phases.extraction.max_retries: invalid value "-1": must be 0 to 1000`},
		{"bad list item", nil, nil, "retry_delays: [60, soon]\n", `config file FILE: retry_delays[1]: invalid value "soon": not a duration…`},
		{"bad phase list item", nil, nil, "phases:\n  ocr:\n    retry_delays: [0]\n", `config file FILE: phases.ocr.retry_delays[0]: invalid value "0": delay 0s is outside…`},
		{"empty list", nil, nil, "retry_delays: []\n", "config file FILE: retry_delays: at least one delay is required"},
		{"a list where a value belongs", nil, nil, "jitter: [0.1]\n", "config file FILE: yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into string"},
		{"a value where a list belongs", nil, nil, "retry_delays: 60s,300s\n", "config file FILE: yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `60s,300s` into []string"},
		{"syntax error", nil, nil, "listen: [\n", "config file FILE: yaml: line 1: did not find expected node content"},
		{"two documents", nil, nil, "listen: :1\n---\nlisten: :2\n", "config file FILE: holds more than one YAML document"},
		{"a duplicate key", nil, nil, "listen: :1\nlisten: :2\n", `config file FILE: yaml: unmarshal errors:` + "\n" + `  line 2: mapping key "listen" already defined at line 1`},
		{"a secret in the file stays hidden", nil, nil, "redis_url: 'ftp://a:hunter2@h'\n", `config file FILE: redis_url: invalid value "ftp://a:xxxxx@h": redisstore: Redis URL "ftp://a:xxxxx@h": unknown scheme "ftp"…`},

		// Authentication. Tokens never appear in a message ("hunter2" is checked below).
		{"a short token", nil, []string{"RETRYD_ADMIN_TOKENS=hunter2"}, "",
			`RETRYD_ADMIN_TOKENS: invalid value (hidden): a token must be 16 to 4096 characters long (this one has 7); make one with: head -c 32 /dev/urandom | base64`},
		{"a token with a space", nil, []string{"RETRYD_WORKER_TOKENS=0123456789abcdef,hunter2 hunter2 hunter2"}, "",
			`RETRYD_WORKER_TOKENS (item 2): invalid value (hidden): character 8 of the token is not allowed: a token is printable ASCII without spaces or commas`},
		{"a token of both roles", nil, []string{"RETRYD_WORKER_TOKENS=hunter2hunter2hunter2", "RETRYD_ADMIN_TOKENS=hunter2hunter2hunter2"}, "",
			"RETRYD_ADMIN_TOKENS item 1 is also given as RETRYD_WORKER_TOKENS item 1: a token may have one role only"},
		{"no token flag", []string{"--worker-tokens", "hunter2hunter2hunter2"}, nil, "", "flag provided but not defined: -worker-tokens (see retryd --help)"},
		{"no token key", nil, nil, "admin_tokens: [hunter2hunter2hunter2]\n", "config file FILE: yaml: unmarshal errors:\n  line 1: field admin_tokens not found…"},
		{"a certificate without its key", []string{"--tls-cert", "c.pem"}, nil, "", "--tls-cert and --tls-key go together: set both to serve TLS, or neither"},
		{"a Redis certificate without its key", []string{"--redis-url", "rediss://r:6380", "--redis-tls-cert", "c.pem"}, nil, "",
			"Redis TLS (--redis-tls-ca, --redis-tls-cert, --redis-tls-key): --redis-tls-cert and --redis-tls-key go together: set both, or neither"},
		{"a Redis CA for a plain URL", []string{"--redis-url", "redis://r:6379", "--redis-tls-ca", "ca.pem"}, nil, "",
			"Redis TLS (--redis-tls-ca, --redis-tls-cert, --redis-tls-key): TLS settings (a CA or a client certificate) need a TLS URL: rediss://, rediss+sentinel:// or rediss+cluster://"},
		{"a Redis CA for a plain Sentinel URL", nil, []string{"RETRYD_REDIS_URL=redis+sentinel://s1,s2/mymaster", "RETRYD_REDIS_TLS_CA=ca.pem"}, "",
			"Redis TLS (--redis-tls-ca, --redis-tls-cert, --redis-tls-key): TLS settings (a CA or a client certificate) need a TLS URL: rediss://, rediss+sentinel:// or rediss+cluster://"},
		{"a profiler without a metrics address", []string{"--metrics-pprof"}, nil, "",
			"--metrics-pprof needs --metrics-listen (the profiler is served next to /metrics)"},
		{"a Redis CA without Redis", []string{"--redis-tls-ca", "ca.pem"}, nil, "",
			"Redis TLS (--redis-tls-ca, --redis-tls-cert, --redis-tls-key): needs --redis-url (the embedded store has no connection to secure)"},
		{"a client CA without TLS", nil, []string{"RETRYD_TLS_CLIENT_CA=ca.pem"}, "", "--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake"},
		{"certificate names without a client CA", []string{"--tls-admin-names", "ops"}, nil, "", "--tls-admin-names and --tls-worker-names need --tls-client-ca"},
		{"a name matching everything", nil, []string{"RETRYD_TLS_WORKER_NAMES=a,*"}, "", `RETRYD_TLS_WORKER_NAMES (item 2): invalid value "*": a name must not be empty or match everything`},
		{"a star inside a name", []string{"--tls-admin-names", "sp*ffe"}, nil, "", `--tls-admin-names: invalid value "sp*ffe": "sp*ffe": '*' may only end a name (a prefix match)`},
		{"a switch with a value", []string{"--allow-unauthenticated", "yes"}, nil, "", `unexpected argument "yes": retryd takes flags only (see retryd --help)`},
		{"a switch in the environment", nil, []string{"RETRYD_ALLOW_UNAUTHENTICATED=yes"}, "", `RETRYD_ALLOW_UNAUTHENTICATED: invalid value "yes": not true or false`},

		// Retention and Redis durability.
		{"a negative count bound", []string{"--max-terminal-jobs", "-1"}, nil, "", `--max-terminal-jobs: invalid value "-1": must be 0 (no count bound) to 1000000000`},
		{"a count bound that is not a number", nil, []string{"RETRYD_MAX_TERMINAL_JOBS=1e6"}, "", `RETRYD_MAX_TERMINAL_JOBS: invalid value "1e6": not a whole number`},
		{"an unknown durability", nil, nil, "redis_durability: paranoid\n", `config file FILE: redis_durability: invalid value "paranoid": must be one of async, strict`},
		{"no replicas to wait for", []string{"--redis-wait-replicas", "0"}, nil, "", `--redis-wait-replicas: invalid value "0": must be 1 to 100`},
		{"a wait that never ends", nil, []string{"RETRYD_REDIS_WAIT_TIMEOUT=0"}, "", `RETRYD_REDIS_WAIT_TIMEOUT: invalid value "0": must be 1ms to 1m`},
		{"eviction allowed with a value", nil, []string{"RETRYD_REDIS_ALLOW_EVICTION=sure"}, "", `RETRYD_REDIS_ALLOW_EVICTION: invalid value "sure": not true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args, want := tt.args, tt.want
			if tt.file != "" {
				path := writeFile(t, tt.file)
				args = append([]string{"--config", path}, args...)
				want = strings.ReplaceAll(want, "FILE", path)
			}
			_, err := loadT(t, args, tt.env)
			require.Error(t, err)
			if prefix, ok := strings.CutSuffix(want, "…"); ok {
				require.True(t, strings.HasPrefix(err.Error(), prefix), "got  %q\nwant %q…", err, prefix)
			} else {
				require.Equal(t, want, err.Error())
			}
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

// TestTokensFromTheEnvironment: the token lists have no flag and no file
// key; they are trimmed, and LogValue counts them without showing them.
func TestTokensFromTheEnvironment(t *testing.T) {
	t.Parallel()
	const w1, w2, a1 = "worker-token-0123456789", "worker-token-abcdefghij", "admin+token/0123456789="
	c, err := loadT(t, nil, []string{"RETRYD_WORKER_TOKENS=" + w1 + ", " + w2 + " ", "RETRYD_ADMIN_TOKENS=" + a1})
	require.NoError(t, err)
	want := Default()
	want.Auth.WorkerTokens = []string{w1, w2}
	want.Auth.AdminTokens = []string{a1}
	requireConfig(t, want, c)
	require.True(t, c.Auth.Enabled())

	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	require.Contains(t, buf.String(), "config.auth.worker_tokens=2 config.auth.admin_tokens=1")
	for _, tok := range []string{w1, w2, a1} {
		require.NotContains(t, buf.String(), tok)
	}
	require.NotContains(t, Usage(), w1)

	// A switch in the config file is a YAML boolean.
	path := writeFile(t, "allow_unauthenticated: true\n")
	c, err = loadT(t, []string{"--config", path}, nil)
	require.NoError(t, err)
	require.True(t, c.Auth.AllowUnauthenticated)
	c, err = loadT(t, []string{"--config", path, "--allow-unauthenticated=false"}, nil)
	require.NoError(t, err)
	require.False(t, c.Auth.AllowUnauthenticated)
}

func TestEmptyFileIsAllDefaults(t *testing.T) {
	t.Parallel()
	for _, content := range []string{"", "# nothing\n", "max_retries: null\nphases:\n"} {
		path := writeFile(t, content)
		c, err := loadT(t, []string{"--config", path}, nil)
		require.NoError(t, err, "%q", content)
		want := Default()
		want.ConfigFile = path
		requireConfig(t, want, c)
	}
}

// TestVersion: --version writes the build's line and stops the start-up,
// whatever else is given.
func TestVersion(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := load([]string{"--max-retries", "2", "--version"}, nil, &out)
	require.ErrorIs(t, err, ErrVersion)
	require.True(t, strings.HasPrefix(out.String(), "retryd "), out.String())
	require.Contains(t, Usage(), "--version")
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"-h", "--help", "-help"} {
		var out bytes.Buffer
		_, err := load([]string{"--max-retries", "2", arg}, nil, &out)
		require.ErrorIs(t, err, ErrHelp)
		require.ErrorIs(t, err, flag.ErrHelp)
		require.Equal(t, Usage(), out.String())
	}
}

func TestUsageListsEverySetting(t *testing.T) {
	t.Parallel()
	u := Usage()
	def := Default()
	for _, s := range settings {
		// The flag line, then the help, then the env line with the default.
		header := "\n" + usageHeader(&s)
		if s.kind == phaseScalar || s.kind == phaseList {
			header += "  (repeatable)"
		}
		i := strings.Index(u, header+"\n")
		require.GreaterOrEqual(t, i, 0, "%s missing", s.name())
		block := u[i+1:]
		if j := nextHeader.FindStringIndex(block); j != nil {
			block = block[:j[0]]
		}
		if s.flag != "" {
			require.Contains(t, block, "env "+s.env, "--%s", s.flag)
		}
		require.Contains(t, block, s.show(&def), "--%s default", s.flag)
		if s.key != "" {
			require.Contains(t, block, "file ", "--%s", s.flag)
			require.Contains(t, block, s.key, "--%s", s.flag)
		}
	}
	require.Contains(t, u, `default "127.0.0.1:50051"`)
	require.Contains(t, u, "EXTRACTION_MAX_RETRIES=5")
	for _, line := range strings.Split(u, "\n") {
		require.LessOrEqual(t, len([]rune(line)), 80, "long help line %q", line)
	}
}

// nextHeader finds the line after a setting's block: the next setting's
// header (two spaces, then not a space) or a group title.
var nextHeader = regexp.MustCompile(`\n(  [^ ]|[^ \n])`)

func TestFlagsAndEnvNamesAreUnique(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for _, s := range settings {
		names := []string{"env:" + s.env}
		if s.flag != "" {
			names = append(names, "flag:"+s.flag)
		}
		for _, name := range names {
			require.Empty(t, seen[name], "%s used twice", name)
			seen[name] = s.name()
		}
		require.NotEmpty(t, s.env, "--%s has no environment twin", s.flag)
		require.NotEmpty(t, s.help)
		require.Equal(t, s.boolean, s.arg == "", "%s: a switch has no ARG, anything else has one", s.name())
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, Default().Validate())

	c := Default()
	c.Listen = "nope"
	c.LeaseDuration = 0
	c.LogFormat = "xml"
	c.Policy.Jitter = 2
	c.Auth.TLSKey = "k.pem"
	c.Auth.AdminTokens = []string{"short"}
	err := c.Validate()
	require.Error(t, err)
	for _, want := range []string{
		"--listen: not host:port",
		"--lease-duration: must be positive",
		"--log-format: must be one of text, json",
		"retry policy: Jitter: 2 is outside [0, 1)",
		"--tls-cert and --tls-key go together",
		"RETRYD_ADMIN_TOKENS item 1: a token must be 16 to 4096 characters long",
	} {
		require.Contains(t, err.Error(), want)
	}
}

func TestLogValueHidesThePassword(t *testing.T) {
	t.Parallel()
	c := Default()
	c.RedisURL = "redis://user:hunter2@redis:6379/0"
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	require.Contains(t, buf.String(), "config.redis_url=redis://user:xxxxx@redis:6379/0")
	require.Contains(t, buf.String(), "config.listen=127.0.0.1:50051")
	require.NotContains(t, buf.String(), "hunter2")
	require.Equal(t, "redis://user:xxxxx@redis:6379/0", c.RedactedRedisURL())
	require.Empty(t, Default().RedactedRedisURL())
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{
		"60":     time.Minute,
		" 60 ":   time.Minute,
		"1.5":    1500 * time.Millisecond,
		"0.3":    300 * time.Millisecond, // exact, no float rounding
		".5":     500 * time.Millisecond,
		"0":      0,
		"-5":     -5 * time.Second,
		"250ms":  250 * time.Millisecond,
		"1h30m":  90 * time.Minute,
		"900s":   15 * time.Minute,
		"1m0.5s": 60500 * time.Millisecond,
	} {
		got, err := parseDuration(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "abc", "1e3", "1.2.3", "5 minutes", "+5", "--5", "-", ".", "9223372037"} {
		_, err := parseDuration(in)
		require.Error(t, err, in)
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{
		"1":       1,
		"262144":  262144,
		"256KiB":  256 << 10,
		"256 KiB": 256 << 10,
		"64MiB":   64 << 20,
	} {
		got, err := parseBytes(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "KiB", "1.5MiB", "1GiB", "65MiB", "-1", "1kb", "99999999999999999999"} {
		_, err := parseBytes(in)
		require.Error(t, err, in)
	}
}

func TestEnvMap(t *testing.T) {
	t.Parallel()
	m := envMap([]string{"A=1", "A=2", "B=", "C", "=D", "E=x=y"})
	require.Equal(t, map[string]string{"A": "1", "E": "x=y"}, m)
}

// TestTestClockSkew: RETRYD_TEST_CLOCK_SKEW moves the clock, either way; it
// is not a setting (no flag, not in --help).
func TestTestClockSkew(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		val  string
		want time.Duration
	}{{"5s", 5 * time.Second}, {"+2.5", 2500 * time.Millisecond}, {"-1m", -time.Minute}} {
		c, err := loadT(t, nil, []string{"RETRYD_TEST_CLOCK_SKEW=" + tc.val})
		require.NoError(t, err, tc.val)
		require.Equal(t, tc.want, c.TestClockSkew, tc.val)
	}
	_, err := loadT(t, nil, []string{"RETRYD_TEST_CLOCK_SKEW=soon"})
	require.ErrorContains(t, err, `RETRYD_TEST_CLOCK_SKEW: invalid value "soon"`)
	require.NotContains(t, Usage(), "RETRYD_TEST_CLOCK_SKEW")
	_, err = loadT(t, []string{"--test-clock-skew", "5s"}, nil)
	require.Error(t, err)
}
