package scheduler

import (
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fixedRandom always draws the same number.
type fixedRandom float64

func (f fixedRandom) Float64() float64 { return float64(f) }

// panicRandom fails the test if the policy draws when it must not.
type panicRandom struct{}

func (panicRandom) Float64() float64 { panic("the random source must not be used") }

// lockedRandom is a seeded, concurrency-safe source.
type lockedRandom struct {
	mu sync.Mutex
	r  *rand.Rand
}

func newLockedRandom(seed uint64) *lockedRandom {
	return &lockedRandom{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (l *lockedRandom) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

func intPtr(n int) *int { return &n }

func secs(ns ...int) []time.Duration {
	ds := make([]time.Duration, len(ns))
	for i, n := range ns {
		ds[i] = time.Duration(n) * time.Second
	}
	return ds
}

func TestDefaultPolicyConfig(t *testing.T) {
	t.Parallel()
	c := DefaultPolicyConfig()
	require.Equal(t, 3, c.MaxRetries)
	require.Equal(t, secs(60, 300, 900), c.Delays)
	require.InDelta(t, 0.1, c.Jitter, 0)
	require.NoError(t, c.Validate())

	p, err := NewPolicy(c, nil)
	require.NoError(t, err)
	require.Equal(t, "3 retries (4 attempts) after 1m0s, 5m0s, 15m0s", p.Phase("extraction").String())
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(*PolicyConfig)
		want   []string // substrings of the error; nil = valid
	}{
		{"defaults", func(*PolicyConfig) {}, nil},
		{"no retries", func(c *PolicyConfig) { c.MaxRetries = 0 }, nil},
		{"the limit", func(c *PolicyConfig) { c.MaxRetries = MaxRetriesLimit }, nil},
		{"exact delays", func(c *PolicyConfig) { c.Jitter = 0 }, nil},
		{"the longest delay", func(c *PolicyConfig) { c.Delays = []time.Duration{MaxDelay} }, nil},
		{"a default retryable name made non-retryable", func(c *PolicyConfig) { c.NonRetryableTypes = []string{"HTTPError"} }, nil},
		{"an empty override", func(c *PolicyConfig) { c.Phases = map[string]PhaseOverride{"chunking": {}} }, nil},
		{"negative retries", func(c *PolicyConfig) { c.MaxRetries = -1 }, []string{"MaxRetries: -1 is outside [0, 1000]"}},
		{"too many retries", func(c *PolicyConfig) { c.MaxRetries = MaxRetriesLimit + 1 }, []string{"MaxRetries: 1001"}},
		{"no delays", func(c *PolicyConfig) { c.Delays = nil }, []string{"Delays: at least one delay is required"}},
		{"zero delay", func(c *PolicyConfig) { c.Delays = secs(60, 0) }, []string{"Delays[1]: delay 0s is outside (0s, 720h0m0s]"}},
		{"negative delay", func(c *PolicyConfig) { c.Delays = secs(-5) }, []string{"Delays[0]: delay -5s"}},
		{"overlong delay", func(c *PolicyConfig) { c.Delays = []time.Duration{MaxDelay + 1} }, []string{"Delays[0]: delay 720h0m0.000000001s"}},
		{"negative jitter", func(c *PolicyConfig) { c.Jitter = -0.1 }, []string{"Jitter: -0.1 is outside [0, 1)"}},
		{"jitter 1", func(c *PolicyConfig) { c.Jitter = 1 }, []string{"Jitter: 1 is outside [0, 1)"}},
		{"jitter NaN", func(c *PolicyConfig) { c.Jitter = math.NaN() }, []string{"Jitter: NaN"}},
		{"phase retries", func(c *PolicyConfig) { c.Phases = map[string]PhaseOverride{"extraction": {MaxRetries: intPtr(-2)}} },
			[]string{`Phases["extraction"].MaxRetries: -2`}},
		{"phase delays", func(c *PolicyConfig) { c.Phases = map[string]PhaseOverride{"extraction": {Delays: secs(1, -1)}} },
			[]string{`Phases["extraction"].Delays[1]: delay -1s`}},
		{"phase name", func(c *PolicyConfig) { c.Phases = map[string]PhaseOverride{"Extraction": {}} },
			[]string{`Phases["Extraction"]: phase name "Extraction" may only hold lower case letters`}},
		{"empty phase name", func(c *PolicyConfig) { c.Phases = map[string]PhaseOverride{"": {}} },
			[]string{`Phases[""]: phase name is empty`}},
		{"empty type name", func(c *PolicyConfig) { c.RetryableTypes = []string{"Ok", ""} }, []string{`RetryableTypes[1]: "" is not a type name`}},
		{"spaced type name", func(c *PolicyConfig) { c.NonRetryableTypes = []string{" Foo"} }, []string{`NonRetryableTypes[0]: " Foo" is not a type name`}},
		{"retryable name shadowed by a default", func(c *PolicyConfig) { c.RetryableTypes = []string{"ValidationError"} },
			[]string{`RetryableTypes[0]: "ValidationError" would never apply`}},
		{"retryable qualified name shadowed by a default", func(c *PolicyConfig) { c.RetryableTypes = []string{"app.PermissionDenied"} },
			[]string{`RetryableTypes[0]: "app.PermissionDenied" would never apply: PermissionDenied is non-retryable`}},
		{"retryable name shadowed by a configured one", func(c *PolicyConfig) {
			c.RetryableTypes = []string{"Foo"}
			c.NonRetryableTypes = []string{"Foo"}
		}, []string{`RetryableTypes[0]: "Foo" would never apply`}},
		{"LeaseExpired made non-retryable", func(c *PolicyConfig) { c.NonRetryableTypes = []string{LeaseExpiredType} },
			[]string{`NonRetryableTypes[0]: "LeaseExpired" cannot be non-retryable`}},
		{"every problem at once", func(c *PolicyConfig) {
			c.MaxRetries = -1
			c.Delays = nil
			c.Jitter = 2
		}, []string{"MaxRetries", "Delays", "Jitter"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := DefaultPolicyConfig()
			tt.mutate(&c)
			err := c.Validate()
			_, newErr := NewPolicy(c, nil)
			if tt.want == nil {
				require.NoError(t, err)
				require.NoError(t, newErr)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			require.ErrorContains(t, newErr, "invalid retry policy")
		})
	}
}

// run plays a job that always fails with errorType in phase, as a worker and
// the store would: each retry runs at the verdict's DueAt with its
// NextRetryCount, until the policy gives up. It returns each attempt's time
// offset from the first and the last verdict.
func run(t *testing.T, p *Policy, phase, errorType string) ([]time.Duration, store.Verdict) {
	t.Helper()
	now := testNow
	offsets := []time.Duration{0}
	var retryCount uint32
	for {
		v := p.Decide(Report{Phase: phase, RetryCount: retryCount, ErrorType: errorType}, now)
		if v.Decision == store.DecisionGiveUp {
			return offsets, v
		}
		require.Equal(t, store.DecisionRetry, v.Decision)
		require.Equal(t, retryCount+1, v.NextRetryCount)
		require.Equal(t, now.Add(v.Delay), v.DueAt)
		now, retryCount = v.DueAt, v.NextRetryCount
		offsets = append(offsets, now.Sub(testNow))
		require.Less(t, len(offsets), 100, "the policy never gave up")
	}
}

func TestDecideSpecificationSchedule(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, nil)

	// Attempt 1 immediate, then 60s, 300s, 900s: 4 attempts, 3 retries.
	offsets, last := run(t, p, "extraction", "ConnectionError")
	require.Equal(t, secs(0, 60, 360, 1260), offsets)
	require.Equal(t, store.Verdict{
		Decision:  store.DecisionGiveUp,
		Retryable: true,
		Reason:    "gave up after 3 of 3 retries: ConnectionError is a retryable error type",
	}, last)

	require.Equal(t, store.Verdict{
		Decision:       store.DecisionRetry,
		Retryable:      true,
		Reason:         "retry 2 of 3 in 5m0s: ConnectionError is a retryable error type",
		NextRetryCount: 2,
		Delay:          300 * time.Second,
		DueAt:          testNow.Add(300 * time.Second),
	}, p.Decide(Report{Phase: "chunking", RetryCount: 1, ErrorType: "ConnectionError"}, testNow))
}

func TestDecideCapRepeatsTheLastDelay(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, func(c *PolicyConfig) {
		c.Phases = map[string]PhaseOverride{"extraction": {MaxRetries: intPtr(5)}}
	})

	// EXTRACTION_MAX_RETRIES=5: 6 attempts, delays 60, 300, 900, 900, 900.
	offsets, last := run(t, p, "extraction", "Timeout")
	require.Equal(t, secs(0, 60, 360, 1260, 2160, 3060), offsets)
	require.Equal(t, "gave up after 5 of 5 retries: Timeout is a retryable error type", last.Reason)
	require.Equal(t, secs(60, 300, 900, 900, 900), p.Phase("extraction").Schedule())

	// Other phases keep the default.
	offsets, _ = run(t, p, "kg_ingest", "Timeout")
	require.Len(t, offsets, 4)

	// The cap holds far beyond the list, with no overflow of the index.
	pp := p.Phase("extraction")
	require.Equal(t, 900*time.Second, pp.Delay(math.MaxUint32))
}

func TestDecidePhaseOverrides(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, func(c *PolicyConfig) {
		c.Phases = map[string]PhaseOverride{
			"chunking":  {Delays: secs(1, 2)},
			"kg_ingest": {MaxRetries: intPtr(1), Delays: secs(7)},
			"ocr":       {MaxRetries: intPtr(0)},
		}
	})
	require.Equal(t, []string{"chunking", "kg_ingest", "ocr"}, p.Phases())

	offsets, _ := run(t, p, "chunking", "Timeout")
	require.Equal(t, secs(0, 1, 3, 5), offsets)

	offsets, last := run(t, p, "kg_ingest", "Timeout")
	require.Equal(t, secs(0, 7), offsets)
	require.Equal(t, "gave up after 1 of 1 retries: Timeout is a retryable error type", last.Reason)

	offsets, last = run(t, p, "ocr", "Timeout")
	require.Equal(t, secs(0), offsets)
	require.Equal(t, "gave up: phase ocr allows no retries: Timeout is a retryable error type", last.Reason)

	require.Equal(t, PhasePolicy{MaxRetries: 3, Delays: secs(60, 300, 900)}, p.Phase("unknown-phase"))
	require.Equal(t, PhasePolicy{MaxRetries: 1, Delays: secs(7)}, p.Phase("kg_ingest"))
}

func TestDecideGivesUp(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, nil)
	tests := []struct {
		name string
		r    Report
		want store.Verdict
	}{
		{"non-retryable type at the first attempt", Report{Phase: "extraction", ErrorType: "ValidationError", HTTPStatus: 503},
			store.Verdict{Decision: store.DecisionGiveUp, Reason: "not retryable: ValidationError is a non-retryable error type"}},
		{"client error", Report{Phase: "extraction", ErrorType: "HTTPError", HTTPStatus: 404},
			store.Verdict{Decision: store.DecisionGiveUp, Reason: "not retryable: HTTP status 404 is a client error (4xx other than 429)"}},
		{"non-retryable even with retries left and a Retry-After", Report{ErrorType: "PermissionDenied", RetryAfter: time.Minute},
			store.Verdict{Decision: store.DecisionGiveUp, Reason: "not retryable: PermissionDenied is a non-retryable error type"}},
		{"retries exhausted", Report{RetryCount: 3, ErrorType: "", HTTPStatus: 502},
			store.Verdict{Decision: store.DecisionGiveUp, Retryable: true, Reason: "gave up after 3 of 3 retries: HTTP status 502 is a server error (500 or above)"}},
		{"past the limit (the limit was lowered)", Report{RetryCount: 7, ErrorType: "Timeout"},
			store.Verdict{Decision: store.DecisionGiveUp, Retryable: true, Reason: "gave up after 7 retries (the limit is 3): Timeout is a retryable error type"}},
		{"the largest retry count", Report{RetryCount: math.MaxUint32, ErrorType: "Timeout"},
			store.Verdict{Decision: store.DecisionGiveUp, Retryable: true, Reason: "gave up after 4294967295 retries (the limit is 3): Timeout is a retryable error type"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, p.Decide(tt.r, testNow))
		})
	}
}

func TestDecideLeaseExpiredIsRetried(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, nil)
	v := p.Decide(Report{Phase: "extraction", RetryCount: 0, ErrorType: LeaseExpiredType}, testNow)
	require.Equal(t, store.DecisionRetry, v.Decision)
	require.Equal(t, "retry 1 of 3 in 1m0s: LeaseExpired is a retryable error type (the worker did not report before its lease expired)", v.Reason)
}

func TestDecideRetryAfter(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, nil)
	tests := []struct {
		name       string
		retryAfter time.Duration
		wantDelay  time.Duration
		wantReason string
	}{
		{"no hint", 0, time.Minute, "retry 1 of 3 in 1m0s: RateLimitError is a retryable error type"},
		{"shorter hint: the policy's delay", 30 * time.Second, time.Minute, "retry 1 of 3 in 1m0s: RateLimitError is a retryable error type"},
		{"equal hint", time.Minute, time.Minute, "retry 1 of 3 in 1m0s: RateLimitError is a retryable error type"},
		{"longer hint wins", 2 * time.Hour, 2 * time.Hour, "retry 1 of 3 in 2h0m0s (the server's Retry-After): RateLimitError is a retryable error type"},
		{"negative hint is ignored", -time.Hour, time.Minute, "retry 1 of 3 in 1m0s: RateLimitError is a retryable error type"},
		{"absurd hint is bounded", math.MaxInt64, MaxDelay, "retry 1 of 3 in 720h0m0s (the server's Retry-After): RateLimitError is a retryable error type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := p.Decide(Report{ErrorType: "RateLimitError", HTTPStatus: 429, RetryAfter: tt.retryAfter}, testNow)
			require.Equal(t, store.DecisionRetry, v.Decision)
			require.Equal(t, tt.wantDelay, v.Delay)
			require.Equal(t, testNow.Add(tt.wantDelay), v.DueAt)
			require.Equal(t, tt.wantReason, v.Reason)
		})
	}

	// With jitter the hint is still a floor.
	pj, err := NewPolicy(DefaultPolicyConfig(), fixedRandom(0))
	require.NoError(t, err)
	v := pj.Decide(Report{ErrorType: "Timeout", RetryAfter: 59 * time.Second}, testNow)
	require.Equal(t, 59*time.Second, v.Delay, "jitter moved 60s down to 54s; the 59s hint must win")
}

func TestDecideJitterBounds(t *testing.T) {
	t.Parallel()
	const fraction = 0.1
	cfg := DefaultPolicyConfig()
	cfg.Jitter = fraction
	p, err := NewPolicy(cfg, newLockedRandom(42))
	require.NoError(t, err)

	for retryCount, base := range secs(60, 300, 900, 900) {
		lo, hi := base-base/10, base+base/10 // exactly ±fraction

		var below, above int
		var minSeen, maxSeen time.Duration = math.MaxInt64, 0
		for range 5000 {
			v := p.Decide(Report{RetryCount: uint32(retryCount), ErrorType: "Timeout", Phase: "x"}, testNow)
			if retryCount == 3 {
				require.Equal(t, store.DecisionGiveUp, v.Decision)
				break
			}
			d := v.Delay
			require.GreaterOrEqual(t, d, lo)
			require.LessOrEqual(t, d, hi)
			require.Equal(t, testNow.Add(d), v.DueAt)
			minSeen, maxSeen = min(minSeen, d), max(maxSeen, d)
			if d < base {
				below++
			} else if d > base {
				above++
			}
		}
		if retryCount == 3 {
			continue
		}
		// Both halves of the range are used, and nearly to their ends.
		require.Greater(t, below, 2000, "base %v", base)
		require.Greater(t, above, 2000, "base %v", base)
		require.Less(t, minSeen, lo+time.Duration(float64(base)*fraction*0.01), "base %v", base)
		require.Greater(t, maxSeen, hi-time.Duration(float64(base)*fraction*0.01), "base %v", base)
	}

	// The extremes of the source map onto the ends of the range.
	for u, want := range map[float64]time.Duration{
		0:                    54 * time.Second,
		0.5:                  60 * time.Second,
		math.Nextafter(1, 0): 66 * time.Second,
		1.5:                  66 * time.Second, // a faulty source is clamped
		-1:                   54 * time.Second,
		math.NaN():           54 * time.Second,
		math.Inf(1):          66 * time.Second,
	} {
		pu, err := NewPolicy(cfg, fixedRandom(u))
		require.NoError(t, err)
		got := pu.Decide(Report{ErrorType: "Timeout"}, testNow).Delay
		require.InDelta(t, float64(want), float64(got), float64(time.Microsecond), "u=%v got %v", u, got)
		require.GreaterOrEqual(t, got, 54*time.Second)
		require.LessOrEqual(t, got, 66*time.Second)
	}
}

func TestDecideJitterZeroIsExact(t *testing.T) {
	t.Parallel()
	cfg := DefaultPolicyConfig()
	cfg.Jitter = 0
	p, err := NewPolicy(cfg, panicRandom{})
	require.NoError(t, err)
	for i, want := range secs(60, 300, 900) {
		require.Equal(t, want, p.Decide(Report{RetryCount: uint32(i), ErrorType: "Timeout"}, testNow).Delay)
	}
}

func TestDecideJitterOnTheLongestDelay(t *testing.T) {
	t.Parallel()
	cfg := DefaultPolicyConfig()
	cfg.Delays = []time.Duration{MaxDelay}
	cfg.Jitter = math.Nextafter(1, 0)
	p, err := NewPolicy(cfg, fixedRandom(math.Nextafter(1, 0)))
	require.NoError(t, err)
	v := p.Decide(Report{ErrorType: "Timeout"}, testNow)
	require.Greater(t, v.Delay, MaxDelay)
	require.Less(t, v.Delay, 2*MaxDelay)
	require.True(t, v.DueAt.After(testNow))
}

func TestNewPolicyCopiesItsConfig(t *testing.T) {
	t.Parallel()
	cfg := DefaultPolicyConfig()
	cfg.Jitter = 0
	cfg.Phases = map[string]PhaseOverride{"extraction": {MaxRetries: intPtr(5), Delays: secs(1, 2)}}
	p, err := NewPolicy(cfg, nil)
	require.NoError(t, err)

	cfg.Delays[0] = time.Hour
	cfg.Phases["extraction"].Delays[0] = time.Hour
	*cfg.Phases["extraction"].MaxRetries = 9
	cfg.Phases["chunking"] = PhaseOverride{MaxRetries: intPtr(0)}
	require.Equal(t, PhasePolicy{MaxRetries: 3, Delays: secs(60, 300, 900)}, p.Phase("chunking"))
	require.Equal(t, PhasePolicy{MaxRetries: 5, Delays: secs(1, 2)}, p.Phase("extraction"))

	// Phase returns a copy too.
	p.Phase("extraction").Delays[0] = time.Hour
	require.Equal(t, time.Second, p.Phase("extraction").Delays[0])
}

func TestPolicyString(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, func(c *PolicyConfig) {
		c.Jitter = 0.1
		c.Phases = map[string]PhaseOverride{
			"extraction": {MaxRetries: intPtr(5)},
			"ocr":        {MaxRetries: intPtr(0)},
			"chunking":   {MaxRetries: intPtr(1), Delays: []time.Duration{250 * time.Millisecond}},
		}
		c.RetryableTypes = []string{"DeadlockDetected"}
		c.NonRetryableTypes = []string{"QuotaExceeded"}
	})
	require.Equal(t, "default: 3 retries (4 attempts) after 1m0s, 5m0s, 15m0s"+
		"; chunking: 1 retry (2 attempts) after 250ms"+
		"; extraction: 5 retries (6 attempts) after 1m0s, 5m0s, 15m0s, 15m0s, 15m0s"+
		"; ocr: no retries (1 attempt)"+
		"; jitter ±10%"+
		"; retryable types: APIError, ConnectionError, DeadlockDetected, HTTPError, LeaseExpired, RateLimitError, ReadTimeout, ServiceUnavailable, Timeout"+
		"; non-retryable types: AuthenticationError, FileNotFoundError, InvalidFileFormat, PermissionDenied, QuotaExceeded, ValidationError",
		p.String())
	require.InDelta(t, 0.1, p.Jitter(), 0)
}

func TestDecideConcurrentUse(t *testing.T) {
	t.Parallel()
	// The default random source and the policy are shared by every request.
	p, err := NewPolicy(DefaultPolicyConfig(), nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				v := p.Decide(Report{Phase: "extraction", RetryCount: uint32(i % 3), ErrorType: "Timeout"}, testNow)
				if v.Decision != store.DecisionRetry || v.Delay <= 0 || !strings.HasPrefix(v.Reason, "retry ") {
					t.Errorf("goroutine %d: unexpected verdict %+v", g, v)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkDecide(b *testing.B) {
	p, err := NewPolicy(DefaultPolicyConfig(), nil)
	require.NoError(b, err)
	reports := []Report{
		{Phase: "extraction", RetryCount: 1, ErrorType: "requests.exceptions.ConnectionError"},
		{Phase: "extraction", RetryCount: 0, ErrorType: "HTTPError", HTTPStatus: 404},
		{Phase: "chunking", RetryCount: 3, ErrorType: "Timeout"},
		{Phase: "kg_ingest", RetryCount: 2, ErrorType: "SomethingElse", HTTPStatus: 503},
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = p.Decide(reports[i%len(reports)], testNow)
		i++
	}
}
