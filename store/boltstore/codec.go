package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/retryd/retryd/store"
)

// Records are encoded with a small hand-written binary format: a version
// byte, then the fields in a fixed order as uvarints, zig-zag varints and
// length-prefixed byte strings.
//
// Why not something ready-made: encoding/json replaces invalid UTF-8 with
// U+FFFD and protobuf refuses it in string fields, but error messages,
// labels and ids are stored byte for byte whatever they contain; gob writes
// its type descriptions into every standalone value, several times the size
// of the data, on the hot path of every report. The format below is as
// compact as protobuf, needs no generated code, and the decoder checks every
// length, so a damaged record is an error, never a panic.
//
// Changing a record: append fields at the end, bump its version, and let
// the decoder read the new fields only from records of the new version, so
// that a data file written by an older retryd still opens.

const (
	jobVersion     = 1
	attemptVersion = 2
	statsVersion   = 1
)

// errCorrupt marks a record that cannot be decoded.
var errCorrupt = errors.New("boltstore: corrupt record")

// jobRecord is a job as stored under jobs/<job id>. Times are Unix
// microseconds (store.DueMicros for due and expiry times).
type jobRecord struct {
	State  store.JobState
	Phase  string
	Cycle  uint32
	Labels map[string]string

	PendingPhase      string
	PendingRetryCount uint32
	DueUS             int64
	LeaseID           string
	LeasedUS          int64
	LeaseExpiresUS    int64
	WorkerID          string

	LastFailedPhase      string
	LastFailedRetryCount uint32
	LastFailedUS         int64
	LastErrorType        string
	LastError            string

	FinalError     string
	FinalErrorType string
	TotalRetries   uint32

	CreatedUS int64
	UpdatedUS int64

	// AttemptSeq numbers the job's attempts in the order they were
	// recorded: attempt keys sort by cycle and phase name, not by time.
	AttemptSeq uint64

	// listed is the (state, updated) the listing index holds for the job,
	// captured when the record was read, so that putJob can move the
	// index entry when either changes. Not encoded.
	listed    bool
	listState store.JobState
	listUS    int64
}

// attemptRecord is one attempt, under attempts/<job>/<cycle>/<phase>/<retry>.
type attemptRecord struct {
	Seq          uint64
	Cycle        uint32
	Phase        string
	RetryCount   uint32
	Status       store.AttemptStatus
	ErrorType    string
	ErrorMessage string
	HTTPStatus   uint32
	Payload      []byte
	Output       []byte
	WorkerID     string
	StartedUS    int64
	FinishedUS   int64

	Decision       store.Decision
	Retryable      bool
	Reason         string
	NextRetryCount uint32
	DelayNS        int64
	VerdictDueUS   int64

	// ResultState is the job state a success produced, returned again to a
	// repeated report of it.
	ResultState store.JobState

	// PayloadRef (version 2) says that the attempt's payload is the one
	// stored for its job and phase, and Payload is then empty: most
	// attempts run with the phase's payload, and a copy in each took about
	// a tenth of the file per pending retry. putPayload gives such
	// attempts a copy of their own before it replaces the stored one.
	PayloadRef bool
}

// statsRecord are one phase's counters of one hour.
type statsRecord struct {
	Attempts          uint64
	Retries           uint64
	SuccessfulRetries uint64
	GivenUp           uint64
	FailuresByType    map[string]uint64
}

// encoder appends to a byte slice.
type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }

func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

// strMap writes a map in key order, so that equal maps encode equally.
func (e *encoder) strMap(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	e.uvarint(uint64(len(m)))
	for _, k := range keys {
		e.str(k)
		e.str(m[k])
	}
}

// decoder reads what encoder wrote. The first error sticks; later reads
// return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated or invalid %s", errCorrupt, what)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("uint32")
		return 0
	}
	return uint32(v)
}

func (d *decoder) u8() uint8 {
	v := d.uvarint()
	if v > 255 {
		d.fail("uint8")
		return 0
	}
	return uint8(v)
}

func (d *decoder) bool() bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 || d.b[0] > 1 {
		d.fail("bool")
		return false
	}
	v := d.b[0] == 1
	d.b = d.b[1:]
	return v
}

// raw returns the next length-prefixed bytes, aliasing the input.
func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

// bytes returns a copy: bbolt's values live only as long as the transaction.
func (d *decoder) bytes() []byte {
	p := d.raw()
	if p == nil {
		return nil
	}
	return slices.Clone(p)
}

func (d *decoder) str() string { return string(d.raw()) }

func (d *decoder) strMap() map[string]string {
	n := d.uvarint()
	if d.err != nil || n == 0 {
		return nil
	}
	if n > uint64(len(d.b)) { // every entry takes at least two bytes
		d.fail("map length")
		return nil
	}
	m := make(map[string]string, n)
	for range n {
		k := d.str()
		m[k] = d.str()
	}
	return m
}

// version reads the leading version byte and checks it against max.
func (d *decoder) version(what string, max uint8) uint8 {
	if len(d.b) == 0 {
		d.fail(what + " version")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	if v == 0 || v > max {
		d.err = fmt.Errorf("%w: %s record version %d is not supported (written by a newer retryd?)", errCorrupt, what, v)
	}
	return v
}

func (d *decoder) done(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d unexpected trailing bytes in %s record", errCorrupt, len(d.b), what)
	}
	return d.err
}

func encodeJob(j *jobRecord) []byte {
	e := encoder{b: make([]byte, 0, 256)}
	e.b = append(e.b, jobVersion)
	e.uvarint(uint64(j.State))
	e.str(j.Phase)
	e.uvarint(uint64(j.Cycle))
	e.strMap(j.Labels)
	e.str(j.PendingPhase)
	e.uvarint(uint64(j.PendingRetryCount))
	e.varint(j.DueUS)
	e.str(j.LeaseID)
	e.varint(j.LeasedUS)
	e.varint(j.LeaseExpiresUS)
	e.str(j.WorkerID)
	e.str(j.LastFailedPhase)
	e.uvarint(uint64(j.LastFailedRetryCount))
	e.varint(j.LastFailedUS)
	e.str(j.LastErrorType)
	e.str(j.LastError)
	e.str(j.FinalError)
	e.str(j.FinalErrorType)
	e.uvarint(uint64(j.TotalRetries))
	e.varint(j.CreatedUS)
	e.varint(j.UpdatedUS)
	e.uvarint(j.AttemptSeq)
	return e.b
}

func decodeJob(b []byte) (*jobRecord, error) {
	d := decoder{b: b}
	d.version("job", jobVersion)
	j := &jobRecord{
		State:                store.JobState(d.u8()),
		Phase:                d.str(),
		Cycle:                d.u32(),
		Labels:               d.strMap(),
		PendingPhase:         d.str(),
		PendingRetryCount:    d.u32(),
		DueUS:                d.varint(),
		LeaseID:              d.str(),
		LeasedUS:             d.varint(),
		LeaseExpiresUS:       d.varint(),
		WorkerID:             d.str(),
		LastFailedPhase:      d.str(),
		LastFailedRetryCount: d.u32(),
		LastFailedUS:         d.varint(),
		LastErrorType:        d.str(),
		LastError:            d.str(),
		FinalError:           d.str(),
		FinalErrorType:       d.str(),
		TotalRetries:         d.u32(),
		CreatedUS:            d.varint(),
		UpdatedUS:            d.varint(),
		AttemptSeq:           d.uvarint(),
	}
	if err := d.done("job"); err != nil {
		return nil, err
	}
	return j, nil
}

func encodeAttempt(a *attemptRecord) []byte {
	e := encoder{b: make([]byte, 0, 128+len(a.Payload)+len(a.Output)+len(a.ErrorMessage))}
	e.b = append(e.b, attemptVersion)
	e.uvarint(a.Seq)
	e.uvarint(uint64(a.Cycle))
	e.str(a.Phase)
	e.uvarint(uint64(a.RetryCount))
	e.uvarint(uint64(a.Status))
	e.str(a.ErrorType)
	e.str(a.ErrorMessage)
	e.uvarint(uint64(a.HTTPStatus))
	e.bytes(a.Payload)
	e.bytes(a.Output)
	e.str(a.WorkerID)
	e.varint(a.StartedUS)
	e.varint(a.FinishedUS)
	e.uvarint(uint64(a.Decision))
	e.bool(a.Retryable)
	e.str(a.Reason)
	e.uvarint(uint64(a.NextRetryCount))
	e.varint(a.DelayNS)
	e.varint(a.VerdictDueUS)
	e.uvarint(uint64(a.ResultState))
	e.bool(a.PayloadRef)
	return e.b
}

func decodeAttempt(b []byte) (*attemptRecord, error) {
	d := decoder{b: b}
	v := d.version("attempt", attemptVersion)
	a := &attemptRecord{
		Seq:            d.uvarint(),
		Cycle:          d.u32(),
		Phase:          d.str(),
		RetryCount:     d.u32(),
		Status:         store.AttemptStatus(d.u8()),
		ErrorType:      d.str(),
		ErrorMessage:   d.str(),
		HTTPStatus:     d.u32(),
		Payload:        d.bytes(),
		Output:         d.bytes(),
		WorkerID:       d.str(),
		StartedUS:      d.varint(),
		FinishedUS:     d.varint(),
		Decision:       store.Decision(d.u8()),
		Retryable:      d.bool(),
		Reason:         d.str(),
		NextRetryCount: d.u32(),
		DelayNS:        d.varint(),
		VerdictDueUS:   d.varint(),
		ResultState:    store.JobState(d.u8()),
	}
	if v >= 2 {
		a.PayloadRef = d.bool()
	}
	if err := d.done("attempt"); err != nil {
		return nil, err
	}
	return a, nil
}

func encodeStats(s *statsRecord) []byte {
	e := encoder{b: make([]byte, 0, 32)}
	e.b = append(e.b, statsVersion)
	e.uvarint(s.Attempts)
	e.uvarint(s.Retries)
	e.uvarint(s.SuccessfulRetries)
	e.uvarint(s.GivenUp)
	keys := make([]string, 0, len(s.FailuresByType))
	for k := range s.FailuresByType {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	e.uvarint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.uvarint(s.FailuresByType[k])
	}
	return e.b
}

func decodeStats(b []byte) (*statsRecord, error) {
	d := decoder{b: b}
	d.version("stats", statsVersion)
	s := &statsRecord{
		Attempts:          d.uvarint(),
		Retries:           d.uvarint(),
		SuccessfulRetries: d.uvarint(),
		GivenUp:           d.uvarint(),
	}
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("map length")
	}
	if d.err == nil && n > 0 {
		s.FailuresByType = make(map[string]uint64, n)
		for range n {
			k := d.str()
			s.FailuresByType[k] = d.uvarint()
		}
	}
	if err := d.done("stats"); err != nil {
		return nil, err
	}
	return s, nil
}
