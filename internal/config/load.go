package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/retryd/retryd/internal/buildinfo"
	"github.com/retryd/retryd/scheduler"
)

// assignment is one value (or list) for one setting from one source.
type assignment struct {
	s *setting
	// phase is set for the per-phase settings.
	phase string
	vals  []string
	// src names where the value came from, as the user wrote it:
	// "--max-retries", "MAX_RETRIES", "config file x.yaml: max_retries".
	src string
	// itemSrc names where each list item came from, when items have names
	// of their own (RETRY_DELAY_2); nil when they share src.
	itemSrc []string
}

// apply sets the value in c; the error names the source and the value.
func (a assignment) apply(c *Config) error {
	err := a.s.set(c, a.phase, a.vals)
	if err == nil {
		return nil
	}
	if ie := (*itemError)(nil); errors.As(err, &ie) {
		src := a.src
		if a.itemSrc != nil {
			src = a.itemSrc[ie.index]
		} else if len(a.vals) > 1 {
			src = fmt.Sprintf("%s (item %d)", a.src, ie.index+1)
		}
		return fmt.Errorf("%s: invalid value %s: %w", src, a.display(a.vals[ie.index]), ie.err)
	}
	if a.s.kind == scalar || a.s.kind == phaseScalar {
		return fmt.Errorf("%s: invalid value %s: %w", a.src, a.display(a.vals[0]), err)
	}
	return fmt.Errorf("%s: %w", a.src, err)
}

// display quotes a value for an error message, hiding secrets.
func (a assignment) display(v string) string {
	if a.s.hidden {
		return "(hidden)"
	}
	if a.s.secret {
		return strconv.Quote(redactURL(v))
	}
	return strconv.Quote(v)
}

// Load builds the configuration from the command-line arguments (without
// the program name) and the environment (os.Environ form), reading the
// config file that --config or RETRYD_CONFIG names. The result is valid.
//
// With -h or --help it writes Usage to standard output and returns an error
// wrapping ErrHelp; with --version, the build (internal/buildinfo) and
// ErrVersion.
func Load(args, environ []string) (Config, error) {
	return load(args, environ, os.Stdout)
}

func load(args, environ []string, helpOut io.Writer) (Config, error) {
	flagLayer, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		_, _ = io.WriteString(helpOut, Usage())
		return Config{}, err
	}
	if errors.Is(err, ErrVersion) {
		_, _ = io.WriteString(helpOut, buildinfo.Read().String()+"\n")
		return Config{}, err
	}
	if err != nil {
		return Config{}, err
	}
	env := envMap(environ)
	envLayer, err := parseEnv(env)
	if err != nil {
		return Config{}, err
	}

	// The file is named by the strongest source that names one.
	path := env["RETRYD_CONFIG"]
	for _, a := range flagLayer {
		if a.s.flag == "config" {
			path = a.vals[0]
		}
	}
	var fileLayer []assignment
	if path != "" {
		if fileLayer, err = readFile(path); err != nil {
			return Config{}, err
		}
	}

	c := Default()
	for _, layer := range [][]assignment{fileLayer, envLayer, flagLayer} {
		for _, a := range layer {
			if err := a.apply(&c); err != nil {
				return Config{}, err
			}
		}
	}
	c.ConfigFile = path
	if v := env[testClockSkewEnv]; v != "" {
		d, err := parseSignedDuration(v)
		if err != nil {
			return Config{}, fmt.Errorf("%s: invalid value %q: %w", testClockSkewEnv, v, err)
		}
		c.TestClockSkew = d
	}
	// Each value was checked as it was read; what is left are combinations.
	if err := c.combinations(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// testClockSkewEnv moves retryd's local clock, for the tests of a replica
// whose clock is off (README.md, "Time"). It is deliberately not a setting:
// no flag, no file key, not in --help.
const testClockSkewEnv = "RETRYD_TEST_CLOCK_SKEW"

// parseSignedDuration is parseDuration with an optional sign.
func parseSignedDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	neg := strings.HasPrefix(s, "-")
	d, err := parseDuration(strings.TrimPrefix(strings.TrimPrefix(s, "-"), "+"))
	if neg {
		d = -d
	}
	return d, err
}

// flagValue records a flag's raw values; parsing happens in apply, so that
// flags, environment and file share one parser and one error format.
type flagValue struct {
	vals       []string
	repeatable bool
	boolean    bool
}

// IsBoolFlag lets a boolean setting be given without a value.
func (v *flagValue) IsBoolFlag() bool { return v.boolean }

func (v *flagValue) String() string { return strings.Join(v.vals, " ") }

func (v *flagValue) Set(s string) error {
	if v.repeatable {
		v.vals = append(v.vals, s)
	} else {
		v.vals = []string{s}
	}
	return nil
}

// parseFlags parses args with the standard flag package (which accepts both
// -name and --name) into assignments, in table order.
func parseFlags(args []string) ([]assignment, error) {
	fs := flag.NewFlagSet("retryd", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; help is written by load
	version := fs.Bool("version", false, "print the build and exit")
	values := make([]*flagValue, len(settings))
	for i := range settings {
		s := &settings[i]
		values[i] = &flagValue{repeatable: s.kind == phaseScalar || s.kind == phaseList, boolean: s.boolean}
		if s.flag != "" { // environment-only settings have none
			fs.Var(values[i], s.flag, s.help)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (see retryd --help)", err)
	}
	if *version {
		return nil, ErrVersion
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: retryd takes flags only (see retryd --help)", fs.Arg(0))
	}

	var out []assignment
	for i := range settings {
		s := &settings[i]
		src := "--" + s.flag
		for _, v := range values[i].vals {
			switch s.kind {
			case scalar:
				out = append(out, assignment{s: s, vals: []string{v}, src: src})
			case list:
				out = append(out, assignment{s: s, vals: splitList(v), src: src})
			case phaseScalar, phaseList:
				phase, val, ok := strings.Cut(v, "=")
				if !ok {
					return nil, fmt.Errorf("%s: invalid value %q: expected %s", src, v, s.arg)
				}
				if err := scheduler.ValidatePhaseName(phase); err != nil {
					return nil, fmt.Errorf("%s: invalid value %q: %w", src, v, err)
				}
				a := assignment{s: s, phase: phase, vals: []string{val}, src: src + " " + phase}
				if s.kind == phaseList {
					a.vals = splitList(val)
				}
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// Usage is the --help text: every flag with its environment twin, config
// file key and default, generated from the settings table.
func Usage() string {
	var b strings.Builder
	b.WriteString(`Usage: retryd [flags]

retryd schedules retries for background workers over gRPC: workers report
failed attempts, retryd decides whether and when to retry, and hands due
retries back over Dispatch streams.

Every flag has an environment twin, and every setting but --config a config
file key. Precedence: flags, then the environment, then the config file,
then the defaults. An environment variable set to "" counts as unset.
Durations are a number of seconds (60, 1.5) or Go syntax (250ms, 1h30m).
Lists are comma-separated (YAML sequences in the config file).
--version prints the build and exits.
`)
	def := Default()
	group := ""
	for i := range settings {
		s := &settings[i]
		if s.group != group {
			group = s.group
			fmt.Fprintf(&b, "\n%s:\n", group)
		}
		b.WriteString(usageHeader(s))
		if s.kind == phaseScalar || s.kind == phaseList {
			b.WriteString("  (repeatable)")
		}
		b.WriteString("\n")
		for _, line := range wrap(s.help, 72) {
			fmt.Fprintf(&b, "      %s\n", line)
		}
		parts := []string{"env " + s.env}
		if s.flag == "" {
			parts = nil // the header names the variable
		}
		switch {
		case s.kind == phaseScalar || s.kind == phaseList:
			parts = append(parts, "file phases.<phase>."+s.key, "default: as "+s.show(&def))
		case s.key != "":
			parts = append(parts, "file "+s.key, fmt.Sprintf("default %q", s.show(&def)))
		default:
			parts = append(parts, fmt.Sprintf("default %q", s.show(&def)))
		}
		if line := "      " + strings.Join(parts, "; "); len(line) <= 80 {
			b.WriteString(line + "\n")
		} else {
			last := len(parts) - 1
			fmt.Fprintf(&b, "      %s\n      %s\n", strings.Join(parts[:last], "; "), parts[last])
		}
	}
	b.WriteString(`
Example config file:
  listen: 127.0.0.1:50051
  max_retries: 3
  retry_delays: [60, 300, 900]
  jitter: 0.1
  phases:
    extraction:
      max_retries: 5
`)
	return b.String()
}

// usageHeader is a setting's first line in Usage: "  --flag ARG", "  --switch",
// or for an environment-only setting "  VARIABLE=ARG (environment only)".
func usageHeader(s *setting) string {
	switch {
	case s.flag == "":
		return fmt.Sprintf("  %s=%s (environment only)", s.env, s.arg)
	case s.boolean:
		return "  --" + s.flag
	}
	return fmt.Sprintf("  --%s %s", s.flag, s.arg)
}

// wrap breaks text into lines of at most width bytes at spaces (a longer
// word gets a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= width:
			line += " " + w
		default:
			lines = append(lines, line)
			line = w
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
