package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/retryd/retryd/scheduler"
)

// fileConfig is the config file's schema (testdata/example.yaml shows every
// key). Scalars are read as strings and parsed by the same code as flags
// and the environment, so that 60 and "60s" mean the same everywhere and
// errors name the key. Pointers tell "absent" (nil: weaker sources stand)
// from "set".
type fileConfig struct {
	Listen            *string `yaml:"listen"`
	MetricsListen     *string `yaml:"metrics_listen"`
	MetricsPprof      *string `yaml:"metrics_pprof"`
	HeartbeatInterval *string `yaml:"heartbeat_interval"`
	LeaseDuration     *string `yaml:"lease_duration"`
	MaxPayloadBytes   *string `yaml:"max_payload_bytes"`
	ShutdownGrace     *string `yaml:"shutdown_grace"`
	KeepaliveTime     *string `yaml:"keepalive_time"`
	KeepaliveTimeout  *string `yaml:"keepalive_timeout"`
	TimeSource        *string `yaml:"time_source"`

	RedisURL           *string `yaml:"redis_url"`
	RedisPrefix        *string `yaml:"redis_prefix"`
	DataDir            *string `yaml:"data_dir"`
	JobRetention       *string `yaml:"job_retention"`
	StatsRetention     *string `yaml:"stats_retention"`
	MaxTerminalJobs    *string `yaml:"max_terminal_jobs"`
	RedisAllowEviction *string `yaml:"redis_allow_eviction"`
	RedisDurability    *string `yaml:"redis_durability"`
	RedisWaitReplicas  *string `yaml:"redis_wait_replicas"`
	RedisWaitTimeout   *string `yaml:"redis_wait_timeout"`
	RedisTLSCA         *string `yaml:"redis_tls_ca"`
	RedisTLSCert       *string `yaml:"redis_tls_cert"`
	RedisTLSKey        *string `yaml:"redis_tls_key"`

	MaxRetries         *string               `yaml:"max_retries"`
	RetryDelays        *[]string             `yaml:"retry_delays"`
	Jitter             *string               `yaml:"jitter"`
	RetryableErrors    *[]string             `yaml:"retryable_errors"`
	NonRetryableErrors *[]string             `yaml:"non_retryable_errors"`
	Phases             map[string]*filePhase `yaml:"phases"`

	LogLevel  *string `yaml:"log_level"`
	LogFormat *string `yaml:"log_format"`

	WorkerTokenFile      *string   `yaml:"worker_token_file"`
	AdminTokenFile       *string   `yaml:"admin_token_file"`
	TLSCert              *string   `yaml:"tls_cert"`
	TLSKey               *string   `yaml:"tls_key"`
	TLSClientCA          *string   `yaml:"tls_client_ca"`
	TLSAdminNames        *[]string `yaml:"tls_admin_names"`
	TLSWorkerNames       *[]string `yaml:"tls_worker_names"`
	AllowUnauthenticated *string   `yaml:"allow_unauthenticated"`
}

// filePhase is one entry of phases: a per-phase override.
type filePhase struct {
	MaxRetries  *string   `yaml:"max_retries"`
	RetryDelays *[]string `yaml:"retry_delays"`
}

// readFile reads the config file into assignments, in table order.
func readFile(path string) ([]assignment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file (--config / RETRYD_CONFIG): %w", err)
	}
	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelt key is an error, not a silent default
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: holds more than one YAML document", path)
	}

	top := fileFields(reflect.ValueOf(&f).Elem())
	var out []assignment
	for i := range settings {
		s := &settings[i]
		src := fmt.Sprintf("config file %s: %s", path, s.key)
		switch s.kind {
		case scalar, list:
			if s.key == "" {
				continue
			}
			field, ok := top[s.key]
			if !ok {
				panic("config: fileConfig has no field for key " + s.key)
			}
			if a, ok := fileAssignment(s, "", field, src); ok {
				out = append(out, a)
			}
		case phaseScalar, phaseList:
			for _, phase := range slices.Sorted(maps.Keys(f.Phases)) {
				src := fmt.Sprintf("config file %s: phases.%s.%s", path, phase, s.key)
				if err := scheduler.ValidatePhaseName(phase); err != nil {
					return nil, fmt.Errorf("config file %s: phases: %w", path, err)
				}
				p := f.Phases[phase]
				if p == nil {
					continue
				}
				if a, ok := fileAssignment(s, phase, fileFields(reflect.ValueOf(p).Elem())[s.key], src); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out, nil
}

// fileFields maps a schema struct's YAML keys to its field values.
func fileFields(v reflect.Value) map[string]reflect.Value {
	m := make(map[string]reflect.Value, v.NumField())
	for i := range v.NumField() {
		m[v.Type().Field(i).Tag.Get("yaml")] = v.Field(i)
	}
	return m
}

// fileAssignment turns a *string or *[]string field into an assignment;
// false when the key is absent (or null).
func fileAssignment(s *setting, phase string, field reflect.Value, src string) (assignment, bool) {
	if !field.IsValid() || field.IsNil() {
		return assignment{}, false
	}
	a := assignment{s: s, phase: phase, src: src}
	switch v := field.Interface().(type) {
	case *string:
		a.vals = []string{*v}
	case *[]string:
		a.vals = *v
		for i := range *v {
			a.itemSrc = append(a.itemSrc, fmt.Sprintf("%s[%d]", src, i))
		}
	default:
		panic(fmt.Sprintf("config: unexpected field type %T for key %s", v, s.key))
	}
	return a, true
}
