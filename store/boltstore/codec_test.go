package boltstore

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

var (
	sampleJob = &jobRecord{
		State: store.StateFailed, Phase: "chunking", Cycle: 3,
		Labels:       map[string]string{"document_id": "d\x00\xff", "": "empty key", "k": ""},
		PendingPhase: "kg_ingest", PendingRetryCount: 2, DueUS: -5, LeaseID: "L", LeasedUS: 1 << 60, LeaseExpiresUS: 1<<63 - 1,
		WorkerID: "w\n", LastFailedPhase: "x", LastFailedRetryCount: 1 << 31, LastFailedUS: -1 << 63,
		LastErrorType: "]]", LastError: "\xc3\x28", FinalError: "{}", FinalErrorType: "'", TotalRetries: 7,
		CreatedUS: 1, UpdatedUS: 2, AttemptSeq: 1<<64 - 1,
	}
	sampleAttempt = &attemptRecord{
		Seq: 9, Cycle: 2, Phase: "extraction", RetryCount: 3, Status: store.AttemptFailed,
		ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: "reset\x00", HTTPStatus: 503,
		Payload: []byte{0, 1, 2, 255}, Output: []byte("out"), WorkerID: "w", StartedUS: 10, FinishedUS: 20,
		Decision: store.DecisionRetry, Retryable: true, Reason: "why", NextRetryCount: 4, DelayNS: -1, VerdictDueUS: 30,
		ResultState: store.StateCompleted,
	}
	sampleStats = &statsRecord{
		Attempts: 1, Retries: 2, SuccessfulRetries: 3, GivenUp: 4,
		FailuresByType: map[string]uint64{"Timeout": 5, "\xff": 1 << 63},
	}
	recordCmp = cmp.Options{cmp.AllowUnexported(jobRecord{}), cmpopts.EquateEmpty()}
)

func TestCodecRoundTrip(t *testing.T) {
	t.Parallel()
	j, err := decodeJob(encodeJob(sampleJob))
	require.NoError(t, err)
	if d := cmp.Diff(sampleJob, j, recordCmp); d != "" {
		t.Errorf("job (-want +got):\n%s", d)
	}
	a, err := decodeAttempt(encodeAttempt(sampleAttempt))
	require.NoError(t, err)
	if d := cmp.Diff(sampleAttempt, a, recordCmp); d != "" {
		t.Errorf("attempt (-want +got):\n%s", d)
	}
	s, err := decodeStats(encodeStats(sampleStats))
	require.NoError(t, err)
	if d := cmp.Diff(sampleStats, s, recordCmp); d != "" {
		t.Errorf("stats (-want +got):\n%s", d)
	}
	require.Equal(t, encodeJob(sampleJob), encodeJob(sampleJob), "equal records encode equally (sorted maps)")
}

// Every truncation of a record, and a record from the future, is an error
// wrapping errCorrupt, never a panic or a silently short record.
func TestCodecRejectsDamage(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		enc    []byte
		decode func([]byte) error
	}{
		"job":     {encodeJob(sampleJob), func(b []byte) error { _, err := decodeJob(b); return err }},
		"attempt": {encodeAttempt(sampleAttempt), func(b []byte) error { _, err := decodeAttempt(b); return err }},
		"stats":   {encodeStats(sampleStats), func(b []byte) error { _, err := decodeStats(b); return err }},
	} {
		for n := range len(c.enc) {
			require.ErrorIs(t, c.decode(c.enc[:n]), errCorrupt, "%s truncated to %d bytes", name, n)
		}
		require.ErrorIs(t, c.decode(append(c.enc, 0)), errCorrupt, "%s with a trailing byte", name)
		future := append([]byte{c.enc[0] + 1}, c.enc[1:]...)
		require.ErrorContains(t, c.decode(future), "newer retryd", "%s of a future version", name)
	}
}

// FuzzDecode checks that no input makes a decoder panic.
func FuzzDecode(f *testing.F) {
	f.Add(encodeJob(sampleJob))
	f.Add(encodeAttempt(sampleAttempt))
	f.Add(encodeStats(sampleStats))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = decodeJob(b)
		_, _ = decodeAttempt(b)
		_, _ = decodeStats(b)
	})
}

func TestKeys(t *testing.T) {
	t.Parallel()
	// Times keep their order through the sign flip.
	times := []int64{-1 << 63, -5, -1, 0, 1, 5, 1<<63 - 1}
	for i := 1; i < len(times); i++ {
		a, b := appendTime(nil, times[i-1]), appendTime(nil, times[i])
		require.Less(t, string(a), string(b), "byte order of %d and %d", times[i-1], times[i])
		require.Equal(t, times[i], readTime(b))
	}
	// A job's prefix never prefixes another job's keys.
	require.NotEqual(t, jobPrefix("ab")[:2], jobPrefix("abc")[:2])
	for _, c := range []struct{ id, phase string }{{"job", "extraction"}, {"", ""}, {"j\x00b", "p h\xff"}} {
		got, err := attemptKeyPhase(c.id, attemptKey(c.id, 7, c.phase, 3))
		require.NoError(t, err)
		require.Equal(t, c.phase, got)
	}
	require.Equal(t, int64(0), hourOf(3599_999_999))
	require.Equal(t, int64(3600_000_000), hourOf(3600_000_000))
	require.Equal(t, int64(-3600_000_000), hourOf(-1))
}

// Attempt records of version 1 (written before PayloadRef) still decode,
// with a payload of their own.
func TestCodecReadsAttemptV1(t *testing.T) {
	t.Parallel()
	ref := *sampleAttempt
	ref.PayloadRef = true
	enc := encodeAttempt(&ref)
	require.Equal(t, byte(1), enc[len(enc)-1], "PayloadRef is the last byte")
	v1 := append([]byte{1}, enc[1:len(enc)-1]...)
	a, err := decodeAttempt(v1)
	require.NoError(t, err)
	if d := cmp.Diff(sampleAttempt, a, recordCmp); d != "" {
		t.Errorf("attempt v1 (-want +got):\n%s", d)
	}
}
