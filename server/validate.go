package server

import (
	"fmt"
	"regexp"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/retryd/retryd/scheduler"
)

// Limits on request fields. They are part of the documented API (README,
// "Limits"): a request outside them gets INVALID_ARGUMENT naming the field
// and changes nothing.
const (
	MaxJobIDBytes        = 256
	MaxPhaseBytes        = 64
	MaxErrorTypeBytes    = 256
	MaxErrorMessageBytes = 64 << 10
	MaxLabels            = 64
	MaxLabelKeyBytes     = 128
	MaxLabelValueBytes   = 1024
	MaxLeaseIDBytes      = 128
	MaxWorkerIDBytes     = 256
	MaxRetryCount        = 10_000
	MaxPhasesPerStream   = 32
	MaxInFlight          = 10_000
	MaxPageSize          = 1000
	DefaultPageSize      = 50
	MaxPageTokenBytes    = 1024
	MaxReasonBytes       = 4096
	MaxRetryAfter        = 7 * 24 * time.Hour
	MaxLeaseDuration     = 24 * time.Hour
	MinLeaseDuration     = time.Millisecond
	MaxStatsWindow       = 90 * 24 * time.Hour
)

var (
	labelKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.\-/]*$`)
)

// violations collects every problem of one request, so that the client sees
// all of them at once.
type violations struct {
	list []*errdetails.BadRequest_FieldViolation
}

func (v *violations) add(field, format string, args ...any) {
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns nil, or an INVALID_ARGUMENT status whose message lists every
// violation and whose details carry a BadRequest.
func (v *violations) err() error {
	if len(v.list) == 0 {
		return nil
	}
	msg := ""
	for i, fv := range v.list {
		if i > 0 {
			msg += "; "
		}
		msg += fv.Field + ": " + fv.Description
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: v.list})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}

// printable reports whether s is non-space printable ASCII only.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func (v *violations) jobID(field, id string) {
	switch {
	case id == "":
		v.add(field, "is required")
	case len(id) > MaxJobIDBytes:
		v.add(field, "is %d bytes, the limit is %d", len(id), MaxJobIDBytes)
	case !printable(id):
		v.add(field, "must be printable ASCII without spaces")
	}
}

func (v *violations) phase(field, p string, required bool) {
	switch {
	case p == "":
		if required {
			v.add(field, "is required")
		}
	case len(p) > MaxPhaseBytes:
		v.add(field, "is %d bytes, the limit is %d", len(p), MaxPhaseBytes)
	default:
		if err := scheduler.ValidatePhaseName(p); err != nil {
			v.add(field, "%v", err)
		}
	}
}

func (v *violations) retryCount(field string, n uint32) {
	if n > MaxRetryCount {
		v.add(field, "is %d, the limit is %d", n, MaxRetryCount)
	}
}

func (v *violations) leaseID(field, id string) {
	switch {
	case len(id) > MaxLeaseIDBytes:
		v.add(field, "is %d bytes, the limit is %d", len(id), MaxLeaseIDBytes)
	case !printable(id):
		v.add(field, "must be printable ASCII without spaces")
	}
}

func (v *violations) labels(field string, labels map[string]string) {
	if len(labels) > MaxLabels {
		v.add(field, "has %d entries, the limit is %d", len(labels), MaxLabels)
		return
	}
	for k, val := range labels {
		switch {
		case len(k) > MaxLabelKeyBytes:
			v.add(field, "key of %d bytes, the limit is %d", len(k), MaxLabelKeyBytes)
		case !labelKeyRE.MatchString(k):
			v.add(field, "key %q must be letters, digits, '_', '.', '-' or '/', starting with a letter or '_'", k)
		case len(val) > MaxLabelValueBytes:
			v.add(field+"["+k+"]", "is %d bytes, the limit is %d", len(val), MaxLabelValueBytes)
		}
	}
}

func (v *violations) timestamp(field string, ts *timestamppb.Timestamp) {
	if ts == nil {
		return
	}
	if err := ts.CheckValid(); err != nil {
		v.add(field, "is not a valid timestamp: %v", err)
	}
}

// duration checks an optional duration against [lo, hi]; nil is allowed.
func (v *violations) duration(field string, d *durationpb.Duration, lo, hi time.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		v.add(field, "is not a valid duration: %v", err)
		return
	}
	if got := d.AsDuration(); got < lo || got > hi {
		v.add(field, "is %v, it must be between %v and %v", got, lo, hi)
	}
}

func (v *violations) text(field, s string, limit int) {
	if len(s) > limit {
		v.add(field, "is %d bytes, the limit is %d", len(s), limit)
	}
	// proto3 strings arrive as valid UTF-8; this guards direct callers.
	if !utf8.ValidString(s) {
		v.add(field, "must be valid UTF-8")
	}
}
