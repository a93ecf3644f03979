package scheduler_test

import (
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// fixedRandom is a jitter source returning one value, whatever it is (NaN
// and out-of-range values included: the policy must cope with a faulty
// source).
type fixedRandom float64

func (r fixedRandom) Float64() float64 { return float64(r) }

// specBase is the specification's reading of a type name, written out
// independently of the classifier: the name itself, or its last component
// after a qualifier separator, or without a Go pointer's '*'.
func specBase(name string) string {
	if i := strings.LastIndexAny(name, ".:\\/$"); i >= 0 {
		return name[i+1:]
	}
	return strings.TrimLeft(name, "*")
}

func specIn(set []string, name string) bool {
	if name == "" {
		return false
	}
	b := specBase(name)
	for _, s := range set {
		if s == name || b != "" && s == b {
			return true
		}
	}
	return false
}

// FuzzClassify checks Classify and Decide on any error type, status, retry
// count, Retry-After hint, phase and jitter draw: nothing panics; the
// verdict is the specification's (a non-retryable name or a 4xx other than
// 429 gives up, anything else retries while retries are left); the delay
// is the phase's, jittered within bounds and never shorter than the hint
// (itself capped at MaxDelay); reasons are short, valid UTF-8 sentences.
func FuzzClassify(f *testing.F) {
	f.Add("requests.exceptions.ConnectionError", uint32(0), uint32(0), int64(0), "extraction", 0.5)
	f.Add("ValidationError", uint32(503), uint32(1), int64(0), "chunking", 0.0)
	f.Add("myapp.HTTPError", uint32(429), uint32(2), int64(10*time.Minute), "kg_ingest", 0.999)
	f.Add("*net.OpError", uint32(404), uint32(3), int64(-1), "", math.NaN())
	f.Add("Net::ReadTimeout", uint32(599), uint32(1000), int64(math.MaxInt64), "extraction", 7.0)
	f.Add("'; DROP TABLE x; --\x00\xff", uint32(1<<31), uint32(math.MaxUint32), int64(math.MinInt64), "\xff", -1.0)
	f.Add(scheduler.LeaseExpiredType, uint32(0), uint32(4), int64(time.Second), "extraction", 0.25)

	five := 5
	cfg := scheduler.DefaultPolicyConfig()
	cfg.RetryableTypes = []string{"myapp.Quota"}
	cfg.NonRetryableTypes = []string{"BadRequest"}
	cfg.Phases = map[string]scheduler.PhaseOverride{
		"extraction": {MaxRetries: &five, Delays: []time.Duration{time.Second, time.Hour}},
	}
	nonRetryable := append(scheduler.DefaultNonRetryableTypes(), cfg.NonRetryableTypes...)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

	f.Fuzz(func(t *testing.T, errorType string, status, retryCount uint32, retryAfter int64, phase string, draw float64) {
		p, err := scheduler.NewPolicy(cfg, fixedRandom(draw))
		if err != nil {
			t.Fatal(err)
		}
		c := p.Classify(errorType, status)
		giveUp := specIn(nonRetryable, errorType) || status >= 400 && status <= 499 && status != 429
		if c.Retryable == giveUp {
			t.Fatalf("Classify(%q, %d) = %+v, the specification says retryable=%v", errorType, status, c, !giveUp)
		}
		if c.Reason == "" || !utf8.ValidString(c.Reason) || len(c.Reason) > 2048 {
			t.Fatalf("reason of %d bytes: %q", len(c.Reason), c.Reason)
		}

		ra := time.Duration(retryAfter)
		v := p.Decide(scheduler.Report{Phase: phase, RetryCount: retryCount, ErrorType: errorType, HTTPStatus: status, RetryAfter: ra}, now)
		if !utf8.ValidString(v.Reason) || v.Reason == "" || len(v.Reason) > 4096 {
			t.Fatalf("verdict reason of %d bytes: %q", len(v.Reason), v.Reason)
		}
		pp := p.Phase(phase)
		switch {
		case giveUp:
			if v.Decision != store.DecisionGiveUp || v.Retryable {
				t.Fatalf("not retryable, yet %+v", v)
			}
			return
		case uint64(retryCount) >= uint64(pp.MaxRetries):
			if v.Decision != store.DecisionGiveUp || !v.Retryable {
				t.Fatalf("retries used up (%d of %d), yet %+v", retryCount, pp.MaxRetries, v)
			}
			return
		}
		if v.Decision != store.DecisionRetry || !v.Retryable || v.NextRetryCount != retryCount+1 {
			t.Fatalf("retry %d of %d: %+v", retryCount, pp.MaxRetries, v)
		}
		if !v.DueAt.Equal(now.Add(v.Delay)) {
			t.Fatalf("due %v, want now + %v", v.DueAt, v.Delay)
		}
		hint := min(ra, scheduler.MaxDelay)
		if v.Delay < hint {
			t.Fatalf("delay %v is shorter than the Retry-After hint %v", v.Delay, ra)
		}
		if v.Delay == hint {
			return
		}
		base := float64(pp.Delay(retryCount))
		j := p.Jitter()
		lo, hi := time.Duration(base*(1-j))-time.Microsecond, time.Duration(base*(1+j))+time.Microsecond
		if v.Delay < lo || v.Delay > hi || v.Delay < 0 {
			t.Fatalf("delay %v outside [%v, %v] (base %v, jitter %v, draw %v)", v.Delay, lo, hi, pp.Delay(retryCount), j, draw)
		}
	})
}
