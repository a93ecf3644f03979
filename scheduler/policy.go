// Package scheduler decides and drives retries. The policy (Policy,
// Classify, Decide) is a pure function of its configuration, the report,
// the clock reading and a random source; the dispatcher, reaper and janitor
// drive the store on an injected clock.
package scheduler

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/retryd/retryd/store"
)

// Limits that keep every schedule computation far from overflow. A
// configuration outside them is rejected by Validate, so Decide never has to
// handle an overflow: its largest delay is MaxDelay*(1+jitter) < 2*MaxDelay.
const (
	// MaxDelay bounds each configured delay and the Retry-After hint Decide
	// honours. A month is longer than any sensible backoff.
	MaxDelay = 30 * 24 * time.Hour
	// MaxRetriesLimit bounds MaxRetries: every retry adds an attempt to the
	// job's stored history, which GetJob returns whole.
	MaxRetriesLimit = 1000
)

// PhaseOverride changes the policy of one phase. A nil or empty field keeps
// the policy-wide value.
type PhaseOverride struct {
	// MaxRetries replaces PolicyConfig.MaxRetries for the phase
	// (EXTRACTION_MAX_RETRIES=5).
	MaxRetries *int
	// Delays replaces PolicyConfig.Delays for the phase.
	Delays []time.Duration
}

// PolicyConfig is the resolved retry configuration. Zero values are
// meaningful (0 retries, no jitter), so a PolicyConfig is not "filled in":
// start from DefaultPolicyConfig and change what you need.
type PolicyConfig struct {
	// MaxRetries is how many retries may follow the original attempt: with
	// 3 a job runs at most 4 times. Defaults to 3.
	MaxRetries int
	// Delays are the waits before retry 1, 2, 3, …; beyond the list the last
	// delay repeats. Defaults to 60s, 300s, 900s.
	Delays []time.Duration
	// Jitter is the fraction, in [0, 1), by which each delay is randomly
	// moved up or down (0.1: a 60s delay becomes 54s to 66s), so that jobs
	// that failed together do not all retry in the same instant. 0 gives
	// exact delays. Defaults to 0.1.
	Jitter float64
	// Phases overrides MaxRetries and Delays per phase name (phase names are
	// case-sensitive, as workers report them). Defaults to none.
	Phases map[string]PhaseOverride
	// RetryableTypes are error type names retried in addition to
	// DefaultRetryableTypes. Defaults to none.
	RetryableTypes []string
	// NonRetryableTypes are error type names given up on in addition to
	// DefaultNonRetryableTypes. Because non-retryable names are tried first,
	// listing a default retryable name here (HTTPError) makes it give up.
	// Defaults to none.
	NonRetryableTypes []string
}

// DefaultPolicyConfig returns the specification's policy: 3 retries after
// 60s, 300s and 900s (then 900s repeats), 10% jitter, the specification's
// error type sets.
func DefaultPolicyConfig() PolicyConfig {
	return PolicyConfig{
		MaxRetries: 3,
		Delays:     []time.Duration{60 * time.Second, 300 * time.Second, 900 * time.Second},
		Jitter:     0.1,
	}
}

// Validate reports every problem of the configuration, each naming its
// field.
func (c PolicyConfig) Validate() error {
	var errs []error
	errs = append(errs, validateMaxRetries("MaxRetries", c.MaxRetries))
	errs = append(errs, validateDelays("Delays", c.Delays, false))
	if !(c.Jitter >= 0 && c.Jitter < 1) { // written so that NaN fails too
		errs = append(errs, fmt.Errorf("Jitter: %v is outside [0, 1)", c.Jitter))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Phases)) {
		o := c.Phases[name]
		field := fmt.Sprintf("Phases[%q]", name)
		if err := ValidatePhaseName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
		if o.MaxRetries != nil {
			errs = append(errs, validateMaxRetries(field+".MaxRetries", *o.MaxRetries))
		}
		errs = append(errs, validateDelays(field+".Delays", o.Delays, true))
	}
	errs = append(errs, validateTypeNames("RetryableTypes", c.RetryableTypes))
	errs = append(errs, validateTypeNames("NonRetryableTypes", c.NonRetryableTypes))
	nonRetryable := typeSet(DefaultNonRetryableTypes(), c.NonRetryableTypes)
	for i, n := range c.RetryableTypes {
		// Non-retryable names are tried first, so such an entry could never
		// take effect: say so rather than ignore it.
		if m, ok := matchType(nonRetryable, n); ok {
			errs = append(errs, fmt.Errorf("RetryableTypes[%d]: %q would never apply: %s is non-retryable (the specification's defaults or NonRetryableTypes), and non-retryable names are matched first", i, n, m))
		}
	}
	for i, n := range c.NonRetryableTypes {
		if n == LeaseExpiredType {
			errs = append(errs, fmt.Errorf("NonRetryableTypes[%d]: %q cannot be non-retryable: retryd records it when a worker never reports, and such attempts are always retried", i, n))
		}
	}
	return errors.Join(errs...)
}

func validateMaxRetries(field string, n int) error {
	if n < 0 || n > MaxRetriesLimit {
		return fmt.Errorf("%s: %d is outside [0, %d]", field, n, MaxRetriesLimit)
	}
	return nil
}

// validateDelays checks a delay list; an override may leave it empty.
func validateDelays(field string, ds []time.Duration, mayBeEmpty bool) error {
	if len(ds) == 0 {
		if mayBeEmpty {
			return nil
		}
		return fmt.Errorf("%s: at least one delay is required", field)
	}
	var errs []error
	for i, d := range ds {
		if err := ValidateDelay(d); err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", field, i, err))
		}
	}
	return errors.Join(errs...)
}

// ValidateDelay checks one retry delay: positive and at most MaxDelay.
func ValidateDelay(d time.Duration) error {
	if d <= 0 || d > MaxDelay {
		return fmt.Errorf("delay %v is outside (0s, %v]", d, MaxDelay)
	}
	return nil
}

func validateTypeNames(field string, names []string) error {
	var errs []error
	for i, n := range names {
		if n == "" || strings.TrimSpace(n) != n {
			errs = append(errs, fmt.Errorf("%s[%d]: %q is not a type name (empty, or surrounded by spaces)", field, i, n))
		}
	}
	return errors.Join(errs...)
}

// ValidatePhaseName checks that a phase name uses the characters the API
// accepts: lower case letters, digits, '_' and '-'. An override for a name
// no worker can report would silently never apply.
func ValidatePhaseName(name string) error {
	if name == "" {
		return errors.New("phase name is empty")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("phase name %q may only hold lower case letters, digits, '_' and '-'", name)
		}
	}
	return nil
}

// Random is the source of jitter. Float64 returns a number in [0, 1); it
// must be safe for concurrent use. Tests inject a seeded source.
type Random interface {
	Float64() float64
}

// globalRandom uses math/rand/v2's top-level functions: safe for concurrent
// use and seeded randomly by the runtime.
type globalRandom struct{}

func (globalRandom) Float64() float64 { return rand.Float64() }

// PhasePolicy is the effective policy of one phase.
type PhasePolicy struct {
	// MaxRetries is how many retries follow the original attempt.
	MaxRetries int
	// Delays is the delay list; beyond it the last delay repeats.
	Delays []time.Duration
}

// Delay returns the un-jittered delay before the retry that follows attempt
// retryCount (0 = the original attempt): Delays[retryCount], or the last
// delay beyond the list.
func (pp PhasePolicy) Delay(retryCount uint32) time.Duration {
	return pp.Delays[min(uint64(retryCount), uint64(len(pp.Delays)-1))]
}

// Schedule returns the un-jittered delay before each retry the phase allows,
// in order: the default policy gives 1m0s, 5m0s, 15m0s.
func (pp PhasePolicy) Schedule() []time.Duration {
	s := make([]time.Duration, pp.MaxRetries)
	for i := range s {
		s[i] = pp.Delay(uint32(i))
	}
	return s
}

// String describes the phase's schedule, e.g. "3 retries (4 attempts) after
// 1m0s, 5m0s, 15m0s".
func (pp PhasePolicy) String() string {
	if pp.MaxRetries == 0 {
		return "no retries (1 attempt)"
	}
	parts := make([]string, 0, pp.MaxRetries)
	for _, d := range pp.Schedule() {
		parts = append(parts, d.String())
	}
	retries := "retries"
	if pp.MaxRetries == 1 {
		retries = "retry"
	}
	return fmt.Sprintf("%d %s (%d attempts) after %s", pp.MaxRetries, retries, pp.MaxRetries+1, strings.Join(parts, ", "))
}

// Policy decides about failed attempts. It is immutable and safe for
// concurrent use.
//
// With DefaultPolicyConfig, a job that keeps failing with a retryable error
// runs at +0 (the original attempt), then after 60s, 300s and 900s, each
// delay moved by up to ±10%, and gives up after the 4th attempt. A
// non-retryable error (a non-retryable type name, or HTTP 4xx other than
// 429) gives up at once.
type Policy struct {
	def          PhasePolicy
	phases       map[string]PhasePolicy
	jitter       float64
	retryable    map[string]struct{}
	nonRetryable map[string]struct{}
	rnd          Random
}

// NewPolicy validates cfg and builds the policy. rnd is the jitter source;
// nil uses math/rand/v2's global generator. cfg is copied: changing it
// afterwards does not change the policy.
func NewPolicy(cfg PolicyConfig, rnd Random) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("scheduler: invalid retry policy: %w", err)
	}
	if rnd == nil {
		rnd = globalRandom{}
	}
	p := &Policy{
		def:          PhasePolicy{MaxRetries: cfg.MaxRetries, Delays: slices.Clone(cfg.Delays)},
		phases:       make(map[string]PhasePolicy, len(cfg.Phases)),
		jitter:       cfg.Jitter,
		retryable:    typeSet(DefaultRetryableTypes(), []string{LeaseExpiredType}, cfg.RetryableTypes),
		nonRetryable: typeSet(DefaultNonRetryableTypes(), cfg.NonRetryableTypes),
		rnd:          rnd,
	}
	for name, o := range cfg.Phases {
		pp := p.def
		if o.MaxRetries != nil {
			pp.MaxRetries = *o.MaxRetries
		}
		if len(o.Delays) > 0 {
			pp.Delays = slices.Clone(o.Delays)
		}
		p.phases[name] = pp
	}
	return p, nil
}

// phase returns the effective policy of a phase without copying.
func (p *Policy) phase(name string) PhasePolicy {
	if pp, ok := p.phases[name]; ok {
		return pp
	}
	return p.def
}

// Phase returns the effective policy of a phase: its override, or the
// policy-wide values for a phase without one.
func (p *Policy) Phase(name string) PhasePolicy {
	pp := p.phase(name)
	pp.Delays = slices.Clone(pp.Delays)
	return pp
}

// Phases lists the phases that have an override, sorted.
func (p *Policy) Phases() []string { return slices.Sorted(maps.Keys(p.phases)) }

// Jitter returns the jitter fraction.
func (p *Policy) Jitter() float64 { return p.jitter }

// RetryableTypes lists every retryable type name (the specification's,
// retryd's LeaseExpired and the configured ones), sorted.
func (p *Policy) RetryableTypes() []string { return sortedNames(p.retryable) }

// NonRetryableTypes lists every non-retryable type name, sorted.
func (p *Policy) NonRetryableTypes() []string { return sortedNames(p.nonRetryable) }

// String describes the effective policy on one line, for the start-up log:
// the default schedule, each override, the jitter and the type sets.
func (p *Policy) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "default: %s", p.def)
	for _, name := range p.Phases() {
		fmt.Fprintf(&b, "; %s: %s", name, p.phases[name])
	}
	fmt.Fprintf(&b, "; jitter ±%g%%", p.jitter*100)
	fmt.Fprintf(&b, "; retryable types: %s", strings.Join(p.RetryableTypes(), ", "))
	fmt.Fprintf(&b, "; non-retryable types: %s", strings.Join(p.NonRetryableTypes(), ", "))
	return b.String()
}

// Report is what Decide needs to know about a failed attempt.
type Report struct {
	Phase string
	// RetryCount is the failed attempt's: 0 for the original attempt.
	RetryCount uint32
	// ErrorType is the error's type name, possibly qualified.
	ErrorType string
	// HTTPStatus is 0 when the error carried none.
	HTTPStatus uint32
	// RetryAfter is the server's Retry-After hint, 0 when none. Hints above
	// MaxDelay count as MaxDelay; the server should reject them instead.
	RetryAfter time.Duration
}

// Decide returns the verdict about a failed attempt, at now.
//
// It retries when the error is retryable (Classify) and RetryCount is below
// the phase's MaxRetries. The delay is the phase's Delays[RetryCount]
// (capped at the last delay), multiplied by a uniform factor in
// [1-Jitter, 1+Jitter], and never shorter than RetryAfter, so that a
// server's hint wins when it is longer. Otherwise it gives up. The verdict's
// Reason says both the schedule and the rule.
func (p *Policy) Decide(r Report, now time.Time) store.Verdict {
	c := p.Classify(r.ErrorType, r.HTTPStatus)
	if !c.Retryable {
		return store.Verdict{Decision: store.DecisionGiveUp, Reason: "not retryable: " + c.Reason}
	}
	pp := p.phase(r.Phase)
	if uint64(r.RetryCount) >= uint64(pp.MaxRetries) {
		var why string
		switch {
		case pp.MaxRetries == 0:
			why = fmt.Sprintf("gave up: phase %s allows no retries", displayName(r.Phase))
		case uint64(r.RetryCount) == uint64(pp.MaxRetries):
			why = fmt.Sprintf("gave up after %d of %d retries", r.RetryCount, pp.MaxRetries)
		default:
			why = fmt.Sprintf("gave up after %d retries (the limit is %d)", r.RetryCount, pp.MaxRetries)
		}
		return store.Verdict{Decision: store.DecisionGiveUp, Retryable: true, Reason: why + ": " + c.Reason}
	}

	delay := p.jittered(pp.Delay(r.RetryCount))
	hint := ""
	if ra := min(r.RetryAfter, MaxDelay); ra > delay {
		delay = ra
		hint = " (the server's Retry-After)"
	}
	next := r.RetryCount + 1 // cannot overflow: RetryCount < MaxRetries <= MaxRetriesLimit
	return store.Verdict{
		Decision:       store.DecisionRetry,
		Retryable:      true,
		Reason:         fmt.Sprintf("retry %d of %d in %s%s: %s", next, pp.MaxRetries, humanDuration(delay), hint, c.Reason),
		NextRetryCount: next,
		Delay:          delay,
		DueAt:          now.Add(delay),
	}
}

// jittered moves d by a uniform factor in [1-jitter, 1+jitter] (the upper
// end is reached only through float64 rounding). With
// d <= MaxDelay and jitter < 1 the result is below 2*MaxDelay: no overflow,
// and float64 holds such nanosecond counts exactly enough (2^53 ns is over
// 100 days).
func (p *Policy) jittered(d time.Duration) time.Duration {
	if p.jitter == 0 {
		return d
	}
	u := p.rnd.Float64()
	if !(u >= 0) { // NaN or negative from a faulty source
		u = 0
	} else if u >= 1 {
		u = math.Nextafter(1, 0)
	}
	return time.Duration(float64(d) * (1 + p.jitter*(2*u-1)))
}

// humanDuration rounds a jittered delay for a reason: "4m53.123s" rather
// than "4m53.123456789s".
func humanDuration(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Millisecond)
	}
	return d
}
