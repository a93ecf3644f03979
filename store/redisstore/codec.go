package redisstore

import (
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/retryd/retryd/store"
)

// Values that hold several fields are sequences of length-prefixed fields:
// "<decimal byte length>:<bytes>", concatenated, without separators. The
// encoding carries any bytes (quotes, newlines, NULs, invalid UTF-8) as they
// are, costs two to four bytes per field, and is produced and parsed by the
// scripts with string.find/string.sub (luaPrelude) as easily as by Go.

// appendField appends one length-prefixed field.
func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// splitFields decodes a sequence of length-prefixed fields.
func splitFields(s string) ([]string, error) {
	var out []string
	for len(s) > 0 {
		colon := strings.IndexByte(s, ':')
		if colon < 1 {
			return nil, fmt.Errorf("%w: field without length", errCorrupt)
		}
		n, err := strconv.Atoi(s[:colon])
		if err != nil || n < 0 || n > len(s)-colon-1 {
			return nil, fmt.Errorf("%w: bad field length %q", errCorrupt, s[:colon])
		}
		out = append(out, s[colon+1:colon+1+n])
		s = s[colon+1+n:]
	}
	return out, nil
}

// encodeLabels encodes labels as key, value, key, value… fields, sorted by
// key so that equal maps encode equally. An empty map encodes as "".
func encodeLabels(labels map[string]string) string {
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		b = appendField(b, k)
		b = appendField(b, labels[k])
	}
	return string(b)
}

func decodeLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	f, err := splitFields(s)
	if err != nil || len(f)%2 != 0 {
		return nil, fmt.Errorf("%w: bad labels encoding (%d fields)", errCorrupt, len(f))
	}
	out := make(map[string]string, len(f)/2)
	for i := 0; i < len(f); i += 2 {
		out[f[i]] = f[i+1]
	}
	return out, nil
}

// An attempt record (a value of the attempts hash) has 17 fields. Go
// encodes the first 13 (what the report says); the script appends the last
// 4 (what only the stored job knows). The status comes first so that a
// script can tell a failure from a success by reading one field.
const (
	recStatus      = iota // "1" failed, "2" succeeded
	recFinished           // µs
	recErrorType          //
	recErrorMsg           //
	recHTTPStatus         //
	recOutput             //
	recDecision           // verdict: "1" retry, "2" give up, "" for a success
	recRetryable          // "1" or "0"
	recReason             //
	recNextRetry          //
	recDelay              // ns
	recVerdictDue         // ns since the epoch, "" when zero
	recResultState        // a success's job state afterwards (its answer on a repeat)
	recSeq                // script: position in the job's history, from 1
	recStarted            // script: µs
	recWorker             // script: the lease's worker, "" when unleased
	recBlob               // script: payload blob number, "" when none
	recFields
)

// encodeFailureRecord encodes the Go part of a failed attempt's record.
func encodeFailureRecord(f store.Failure) string {
	v := f.Verdict
	var b []byte
	b = appendField(b, "1")
	b = appendField(b, microsOf(f.Now))
	b = appendField(b, f.ErrorType)
	b = appendField(b, f.ErrorMessage)
	b = appendField(b, strconv.FormatUint(uint64(f.HTTPStatus), 10))
	b = appendField(b, "")
	b = appendField(b, strconv.Itoa(int(v.Decision)))
	b = appendField(b, boolField(v.Retryable))
	b = appendField(b, v.Reason)
	b = appendField(b, strconv.FormatUint(uint64(v.NextRetryCount), 10))
	b = appendField(b, strconv.FormatInt(int64(v.Delay), 10))
	b = appendField(b, nanosOf(v.DueAt))
	b = appendField(b, "")
	return string(b)
}

// encodeSuccessRecord encodes the Go part of a successful attempt's record.
func encodeSuccessRecord(s store.Success, after store.JobState) string {
	var b []byte
	b = appendField(b, "2")
	b = appendField(b, microsOf(s.Now))
	b = appendField(b, "")
	b = appendField(b, "")
	b = appendField(b, "0")
	b = appendField(b, string(s.Output))
	for range 6 { // no verdict
		b = appendField(b, "")
	}
	b = appendField(b, strconv.Itoa(int(after)))
	return string(b)
}

// record is a decoded attempt record.
type record struct {
	attempt store.Attempt
	seq     int64
	blob    string
	state   store.JobState // recResultState
}

// decodeRecord decodes the record stored under field "<cycle>:<retry>:<phase>".
func decodeRecord(field, value string) (record, error) {
	var r record
	cycle, rc, phase, err := parseAttemptField(field)
	if err != nil {
		return r, err
	}
	f, err := splitFields(value)
	if err != nil {
		return r, fmt.Errorf("attempt %q: %w", field, err)
	}
	if len(f) != recFields {
		return r, fmt.Errorf("%w: attempt %q: %d fields, want %d", errCorrupt, field, len(f), recFields)
	}
	var p parser
	a := store.Attempt{
		Cycle:        cycle,
		Phase:        phase,
		RetryCount:   rc,
		Status:       store.AttemptStatus(p.uint(f[recStatus])),
		ErrorType:    f[recErrorType],
		ErrorMessage: f[recErrorMsg],
		HTTPStatus:   uint32(p.uint(f[recHTTPStatus])),
		Output:       bytesOrNil(f[recOutput]),
		WorkerID:     f[recWorker],
		StartedAt:    p.micros(f[recStarted]),
		FinishedAt:   p.micros(f[recFinished]),
	}
	if f[recDecision] != "" {
		a.Verdict = store.Verdict{
			Decision:       store.Decision(p.uint(f[recDecision])),
			Retryable:      f[recRetryable] == "1",
			Reason:         f[recReason],
			NextRetryCount: uint32(p.uint(f[recNextRetry])),
			Delay:          time.Duration(p.int(f[recDelay])),
			DueAt:          p.nanos(f[recVerdictDue]),
		}
	}
	r.attempt = a
	r.seq = p.int(f[recSeq])
	r.blob = f[recBlob]
	if f[recResultState] != "" {
		r.state = store.JobState(p.uint(f[recResultState]))
	}
	if p.err != nil {
		return r, fmt.Errorf("attempt %q: %w", field, p.err)
	}
	return r, nil
}

// attemptField is the attempts-hash field of an attempt. The phase comes
// last so that it may contain any byte, colons included.
func attemptField(cycle, retryCount uint32, phase string) string {
	return strconv.FormatUint(uint64(cycle), 10) + ":" + strconv.FormatUint(uint64(retryCount), 10) + ":" + phase
}

func parseAttemptField(field string) (cycle, retryCount uint32, phase string, err error) {
	parts := strings.SplitN(field, ":", 3)
	if len(parts) != 3 {
		return 0, 0, "", fmt.Errorf("%w: bad attempt field %q", errCorrupt, field)
	}
	var p parser
	cycle, retryCount = uint32(p.uint(parts[0])), uint32(p.uint(parts[1]))
	if p.err != nil {
		return 0, 0, "", fmt.Errorf("%w: bad attempt field %q: %w", errCorrupt, field, p.err)
	}
	return cycle, retryCount, parts[2], nil
}

// pending is a decoded "pd" field: the job's pending attempt, scheduled
// (3 fields) or leased (7 fields).
type pending struct {
	phase      string
	retryCount uint32
	due        time.Time
	leaseID    string
	expires    time.Time
	workerID   string
	leasedAt   time.Time
}

func decodePending(s string) (pending, error) {
	f, err := splitFields(s)
	if err != nil {
		return pending{}, fmt.Errorf("pending attempt: %w", err)
	}
	if len(f) != 3 && len(f) != 7 {
		return pending{}, fmt.Errorf("%w: pending attempt: %d fields", errCorrupt, len(f))
	}
	var p parser
	pd := pending{phase: f[0], retryCount: uint32(p.uint(f[1])), due: p.micros(f[2])}
	if len(f) == 7 {
		pd.leaseID, pd.expires, pd.workerID, pd.leasedAt = f[3], p.micros(f[4]), f[5], p.micros(f[6])
	}
	if p.err != nil {
		return pending{}, fmt.Errorf("pending attempt: %w", p.err)
	}
	return pd, nil
}

// A stats field counts one kind of finished attempt of one phase in one
// hour: outcome ("s" succeeded, "r" failed and retried, "g" failed and
// given up), "1" when retry_count > 0 else "0", the phase as a
// length-prefixed field, then the error type (failures only) to the end.
// One HINCRBY per attempt keeps every counter of PhaseStats.

// statsField is the stats field of a finished attempt.
func statsField(outcome byte, retryCount uint32, phase, errorType string) string {
	b := []byte{outcome, '0'}
	if retryCount > 0 {
		b[1] = '1'
	}
	b = appendField(b, phase)
	return string(append(b, errorType...))
}

type statsKey struct {
	outcome   byte
	retried   bool
	phase     string
	errorType string
}

func parseStatsField(s string) (statsKey, error) {
	if len(s) < 4 {
		return statsKey{}, fmt.Errorf("%w: bad stats field %q", errCorrupt, s)
	}
	k := statsKey{outcome: s[0], retried: s[1] == '1'}
	rest := s[2:]
	colon := strings.IndexByte(rest, ':')
	if colon < 1 {
		return statsKey{}, fmt.Errorf("%w: bad stats field %q", errCorrupt, s)
	}
	n, err := strconv.Atoi(rest[:colon])
	if err != nil || n < 0 || n > len(rest)-colon-1 {
		return statsKey{}, fmt.Errorf("%w: bad stats field %q", errCorrupt, s)
	}
	k.phase = rest[colon+1 : colon+1+n]
	k.errorType = rest[colon+1+n:]
	return k, nil
}

// An events message is one or more events, each a kind byte and its fields:
// "s" phase due-µs (EventScheduled), "r" lease-id (EventLeaseReleased). A
// script publishes all the events of one change in one message.

func decodeEvents(msg string) ([]store.Event, error) {
	var out []store.Event
	for len(msg) > 0 {
		kind := msg[0]
		msg = msg[1:]
		n := 1
		if kind == 's' {
			n = 2
		} else if kind != 'r' {
			return nil, fmt.Errorf("%w: unknown event kind %q", errCorrupt, kind)
		}
		var f []string
		for range n {
			colon := strings.IndexByte(msg, ':')
			if colon < 1 {
				return nil, fmt.Errorf("%w: bad event field", errCorrupt)
			}
			l, err := strconv.Atoi(msg[:colon])
			if err != nil || l < 0 || l > len(msg)-colon-1 {
				return nil, fmt.Errorf("%w: bad event field length", errCorrupt)
			}
			f = append(f, msg[colon+1:colon+1+l])
			msg = msg[colon+1+l:]
		}
		if kind == 'r' {
			out = append(out, store.Event{Kind: store.EventLeaseReleased, LeaseID: f[0]})
			continue
		}
		var p parser
		ev := store.Event{Kind: store.EventScheduled, Phase: f[0], DueAt: p.micros(f[1])}
		if p.err != nil {
			return nil, p.err
		}
		out = append(out, ev)
	}
	return out, nil
}

// A ListJobs cursor is the (score, job id) of the last job of a page,
// encoded as two fields in unpadded URL-safe base64.

func encodeCursor(score int64, id string) string {
	b := appendField(nil, strconv.FormatInt(score, 10))
	b = appendField(b, id)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(c string) (score int64, id string, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", fmt.Errorf("%w: redisstore: invalid ListJobs cursor %q", store.ErrInvalidArgument, c)
	}
	f, err := splitFields(string(raw))
	if err != nil || len(f) != 2 {
		return 0, "", fmt.Errorf("%w: redisstore: invalid ListJobs cursor %q", store.ErrInvalidArgument, c)
	}
	score, err = strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%w: redisstore: invalid ListJobs cursor %q", store.ErrInvalidArgument, c)
	}
	return score, f[1], nil
}

// microsOf encodes a timestamp (rounded down) as decimal Unix µs.
func microsOf(t time.Time) string { return strconv.FormatInt(store.NowMicros(t), 10) }

// dueOf encodes a due time or expiry (rounded up) as decimal Unix µs.
func dueOf(t time.Time) string { return strconv.FormatInt(store.DueMicros(t), 10) }

// nanosOf keeps a verdict's DueAt exactly; "" is the zero time.
func nanosOf(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixNano(), 10)
}

func boolField(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// parser parses decimal fields, keeping the first error.
type parser struct{ err error }

func (p *parser) int(s string) int64 {
	if s == "" {
		return 0
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%w: bad number %q", errCorrupt, s)
	}
	return v
}

func (p *parser) uint(s string) uint64 {
	if s == "" {
		return 0
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%w: bad number %q", errCorrupt, s)
	}
	return v
}

func (p *parser) micros(s string) time.Time { return store.FromMicros(p.int(s)) }

func (p *parser) nanos(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	return time.Unix(0, p.int(s)).UTC()
}
