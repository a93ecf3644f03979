package redisstore

import (
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/retryd/retryd/store"
)

// FuzzCodec checks the encodings the Go side and the scripts share (codec.go):
// every encoder's output decodes to what was encoded, whatever bytes the
// values hold (quotes, colons, NULs, invalid UTF-8: they are data), and no
// decoder panics on any input, as corrupt or hostile stored bytes must give
// an error, never a crash.
func FuzzCodec(f *testing.F) {
	f.Add("extraction", "ConnectionError", "connection refused", uint32(1), uint32(0), int64(1_777_000_000_000_000))
	f.Add("a:b", "3:abc", "", uint32(0), uint32(4294967295), int64(-1))
	f.Add("x');redis.call('FLUSHALL');--", "'; DROP TABLE jobs; --", "]] .. KEYS[1] .. [[\x00\xff", uint32(7), uint32(10000), int64(0))
	f.Add("", "12:", "s5:abcde", uint32(2), uint32(3), int64(1<<62))
	f.Add("2:ab", "r3:xyz", "-1:", uint32(0), uint32(0), int64(-1<<63))

	f.Fuzz(func(t *testing.T, a, b, c string, n1, n2 uint32, num int64) {
		// Any input: decoders fail or succeed, never panic.
		_, _ = splitFields(a)
		_, _ = decodeLabels(a)
		_, _, _, _ = parseAttemptField(a)
		_, _ = parseStatsField(a)
		_, _, _ = decodeCursor(a)
		_, _ = decodeRecord(a, b)
		_, _ = decodePending(a)
		_, _ = decodeEvents(a)
		_, _ = decodeJob("job", map[string]string{"st": a, "lb": b, "pd": c, "lf": a, "cy": b, "ca": c}, b)

		// Length-prefixed fields.
		enc := string(appendField(appendField(appendField(nil, a), b), c))
		got, err := splitFields(enc)
		if err != nil || !slices.Equal(got, []string{a, b, c}) {
			t.Fatalf("splitFields(%q) = %q, %v", enc, got, err)
		}

		// Labels.
		labels := map[string]string{a: b, c: a}
		dl, err := decodeLabels(encodeLabels(labels))
		if err != nil || !maps.Equal(dl, labels) {
			t.Fatalf("labels %q came back as %q, %v", labels, dl, err)
		}

		// Attempt fields: the phase may hold any byte, colons included.
		cy, rc, ph, err := parseAttemptField(attemptField(n1, n2, a))
		if err != nil || cy != n1 || rc != n2 || ph != a {
			t.Fatalf("attempt field (%d, %d, %q) came back as (%d, %d, %q), %v", n1, n2, a, cy, rc, ph, err)
		}

		// Stats fields.
		outcome := "srg"[n1%3]
		sk, err := parseStatsField(statsField(outcome, n2, a, b))
		if err != nil || sk != (statsKey{outcome: outcome, retried: n2 > 0, phase: a, errorType: b}) {
			t.Fatalf("stats field (%c, %d, %q, %q) came back as %+v, %v", outcome, n2, a, b, sk, err)
		}

		// ListJobs cursors.
		score, id, err := decodeCursor(encodeCursor(num, a))
		if err != nil || score != num || id != a {
			t.Fatalf("cursor (%d, %q) came back as (%d, %q), %v", num, a, score, id, err)
		}

		// A failed attempt's record: the Go part, then the script's part.
		now := time.UnixMicro(num / 2).UTC()
		fl := store.Failure{
			ErrorType: a, ErrorMessage: b, HTTPStatus: n1, Now: now,
			Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: c, NextRetryCount: n2,
				Delay: time.Duration(num), DueAt: time.Unix(0, num).UTC()},
		}
		value := encodeFailureRecord(fl)
		for _, s := range []string{"4", strconv.FormatInt(num/3, 10), c, "9"} {
			value += string(appendField(nil, s))
		}
		r, err := decodeRecord(attemptField(n1, n2, b), value)
		if err != nil {
			t.Fatalf("record: %v", err)
		}
		want := store.Attempt{
			Cycle: n1, Phase: b, RetryCount: n2, Status: store.AttemptFailed, ErrorType: a, ErrorMessage: b, HTTPStatus: n1,
			WorkerID: c, StartedAt: store.FromMicros(num / 3), FinishedAt: store.FromMicros(num / 2), Verdict: fl.Verdict,
		}
		if r.seq != 4 || r.blob != "9" || !equalAttempts(r.attempt, want) {
			t.Fatalf("record came back as %+v (seq %d, blob %q), want %+v", r.attempt, r.seq, r.blob, want)
		}

		// A job's pending attempt, scheduled and leased.
		due := store.FromMicros(num)
		pd, err := decodePending(string(appendField(appendField(appendField(nil, a), strconv.FormatUint(uint64(n2), 10)), strconv.FormatInt(num, 10))))
		if err != nil || pd != (pending{phase: a, retryCount: n2, due: due}) {
			t.Fatalf("pending came back as %+v, %v", pd, err)
		}
		leased := appendField(appendField(appendField(nil, a), strconv.FormatUint(uint64(n2), 10)), strconv.FormatInt(num, 10))
		for _, s := range []string{b, strconv.FormatInt(num, 10), c, "0"} {
			leased = appendField(leased, s)
		}
		pd, err = decodePending(string(leased))
		if err != nil || pd != (pending{phase: a, retryCount: n2, due: due, leaseID: b, expires: due, workerID: c}) {
			t.Fatalf("leased pending came back as %+v, %v", pd, err)
		}

		// Events, as the scripts publish them: several in one message.
		msg := "s" + string(appendField(appendField(nil, a), strconv.FormatInt(num, 10))) + "r" + string(appendField(nil, b))
		evs, err := decodeEvents(msg)
		wantEvs := []store.Event{{Kind: store.EventScheduled, Phase: a, DueAt: due}, {Kind: store.EventLeaseReleased, LeaseID: b}}
		if err != nil || !slices.Equal(evs, wantEvs) {
			t.Fatalf("events %q came back as %+v, %v", msg, evs, err)
		}
	})
}

// equalAttempts compares attempts with time.Time.Equal.
func equalAttempts(a, b store.Attempt) bool {
	return a.Cycle == b.Cycle && a.Phase == b.Phase && a.RetryCount == b.RetryCount && a.Status == b.Status &&
		a.ErrorType == b.ErrorType && a.ErrorMessage == b.ErrorMessage && a.HTTPStatus == b.HTTPStatus &&
		a.WorkerID == b.WorkerID && a.StartedAt.Equal(b.StartedAt) && a.FinishedAt.Equal(b.FinishedAt) &&
		a.Verdict.Decision == b.Verdict.Decision && a.Verdict.Retryable == b.Verdict.Retryable &&
		a.Verdict.Reason == b.Verdict.Reason && a.Verdict.NextRetryCount == b.Verdict.NextRetryCount &&
		a.Verdict.Delay == b.Verdict.Delay && a.Verdict.DueAt.Equal(b.Verdict.DueAt) && a.Output == nil
}
