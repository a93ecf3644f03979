package server

import (
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
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
	MaxErrorTypeFilters  = 64
	DefaultPageSize      = 50
	MaxPageTokenBytes    = 1024
	MaxReasonBytes       = 4096
	MaxRetryAfter        = 7 * 24 * time.Hour
	MaxLeaseDuration     = 24 * time.Hour
	MinLeaseDuration     = time.Millisecond
	MaxStatsWindow       = 90 * 24 * time.Hour
	// MaxPayloadDepth bounds how deeply a payload's objects and lists nest
	// (a flat object is depth 1). Protobuf decoders stop at 100 nested
	// messages, and each level of a Struct costs three (Struct, map entry,
	// Value): grpc-python could not decode a task whose payload nests 33
	// deep, so such a payload would break every worker it was sent to.
	MaxPayloadDepth = 20
	// MaxMetadataBytes bounds a request's headers (the HTTP/2 header list:
	// metadata, the authorization token, grpc's own headers).
	MaxMetadataBytes = 32 << 10
)

var (
	labelKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.\-/]*$`)
)

// maxViolations bounds the violations one error lists, so that a request
// with thousands of bad entries cannot make an error of megabytes (the
// status travels in HTTP/2 trailers, which clients limit).
const maxViolations = 16

// violations collects the problems of one request, so that the client sees
// them all at once (the first maxViolations of them).
type violations struct {
	list    []*errdetails.BadRequest_FieldViolation
	dropped int
}

func (v *violations) add(field, format string, args ...any) {
	if len(v.list) == maxViolations {
		v.dropped++
		return
	}
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
	if v.dropped > 0 {
		msg += fmt.Sprintf("; and %d more", v.dropped)
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

// workerID checks an optional worker id: it is shown to operators (GetJob,
// logs), so it must be text without control characters.
func (v *violations) workerID(field, id string) {
	switch {
	case len(id) > MaxWorkerIDBytes:
		v.add(field, "is %d bytes, the limit is %d", len(id), MaxWorkerIDBytes)
	case !utf8.ValidString(id):
		v.add(field, "must be valid UTF-8")
	case strings.ContainsFunc(id, unicode.IsControl):
		v.add(field, "must not contain control characters")
	}
}

// structDepth returns how deeply st's objects and lists nest: 1 for an
// object of plain values. It stops counting past limit, so that its cost
// is bounded whatever it is given.
func structDepth(st *structpb.Struct, limit int) int {
	if st == nil || limit <= 0 {
		return 0
	}
	deepest := 0
	for _, val := range st.GetFields() {
		deepest = max(deepest, valueDepth(val, limit-1))
		if deepest >= limit-1 {
			break
		}
	}
	return 1 + deepest
}

func valueDepth(val *structpb.Value, limit int) int {
	if limit <= 0 {
		return 0
	}
	switch k := val.GetKind().(type) {
	case *structpb.Value_StructValue:
		return structDepth(k.StructValue, limit)
	case *structpb.Value_ListValue:
		deepest := 0
		for _, item := range k.ListValue.GetValues() {
			deepest = max(deepest, valueDepth(item, limit-1))
			if deepest >= limit-1 {
				break
			}
		}
		return 1 + deepest
	}
	return 0
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

// page checks a listing's page_size and page_token.
func (v *violations) page(size uint32, token string) {
	if size > MaxPageSize {
		v.add("page_size", "is %d, the limit is %d", size, MaxPageSize)
	}
	if len(token) > MaxPageTokenBytes {
		v.add("page_token", "is %d bytes, the limit is %d", len(token), MaxPageTokenBytes)
	}
}

// pageSize is a checked page_size, DefaultPageSize for 0.
func pageSize(n uint32) int {
	if n == 0 {
		return DefaultPageSize
	}
	return int(n)
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

// checkDispatch validates a Dispatch request.
func checkDispatch(req *retrydv1.DispatchRequest) error {
	var v violations
	switch n := len(req.GetPhases()); {
	case n == 0:
		v.add("phases", "at least one phase is required")
	case n > MaxPhasesPerStream:
		v.add("phases", "has %d phases, the limit is %d", n, MaxPhasesPerStream)
	}
	seen := make(map[string]bool)
	for _, p := range req.GetPhases()[:min(len(req.GetPhases()), MaxPhasesPerStream)] {
		v.phase("phases", p, true)
		if seen[p] {
			v.add("phases", "%q is listed twice", p)
		}
		seen[p] = true
	}
	v.workerID("worker_id", req.GetWorkerId())
	if req.GetMaxInFlight() > MaxInFlight {
		v.add("max_in_flight", "is %d, the limit is %d", req.GetMaxInFlight(), MaxInFlight)
	}
	if req.GetLeaseDuration() != nil {
		v.duration("lease_duration", req.GetLeaseDuration(), MinLeaseDuration, MaxLeaseDuration)
	}
	return v.err()
}
