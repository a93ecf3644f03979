package server_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/internal/teststore"
	"github.com/retryd/retryd/server"
	"github.com/retryd/retryd/store/redisstore"
)

// Metacharacters of the languages a careless store would splice values
// into: Lua (the Redis scripts), SQL (the specification's own injection
// bug), RESP (the Redis protocol), and key names.
var (
	luaMeta = []string{
		`"]] redis.call('FLUSHALL') --[[`,
		`'); redis.call('DEL', KEYS[1]); --`,
		`\"; return redis.call(\"FLUSHDB\") --`,
		`]==] os.exit() [==[`,
	}
	sqlMeta = []string{
		`' OR '1'='1`,
		`'; DROP TABLE pipeline_job; --`,
		`1; DELETE FROM pipeline_phase WHERE 1=1`,
	}
	respMeta = "\r\n*1\r\n$8\r\nFLUSHALL\r\n"
	// Printable and without spaces: valid ids, naming nothing.
	validMeta = []string{`KEYS[1]`, `ARGV[1]`, `'OR'1'='1`, `x');redis.call('FLUSHALL');--`, `{retryd}:j:victim`, `*`, `%s%n%x`, `../../etc/passwd`}
	huge      = strings.Repeat("h", 2<<20) // over any message size limit
)

// hostileCase is one request and the codes that may answer it.
type hostileCase struct {
	name  string
	codes []codes.Code
	call  func(ctx context.Context) error
}

func want(cs ...codes.Code) []codes.Code { return cs }

var (
	invalid   = want(codes.InvalidArgument)
	tooLarge  = want(codes.ResourceExhausted)
	noSuchJob = want(codes.NotFound, codes.FailedPrecondition)
)

// hostileCases builds the barrage: for every RPC, values with metacharacters
// where they are not allowed, lengths and counts just past each limit,
// values far past them, and well-formed ids full of metacharacters that
// name nothing. The victim job exists, with a retry scheduled, so that
// requests naming it test that a refusal changes nothing.
func hostileCases(b *bundle, maxPayload int) []hostileCase {
	var cases []hostileCase
	add := func(name string, cs []codes.Code, call func(ctx context.Context) error) {
		cases = append(cases, hostileCase{name, cs, call})
	}
	deep := &structpb.Struct{Fields: map[string]*structpb.Value{"leaf": structpb.NewNumberValue(1)}}
	for range server.MaxPayloadDepth {
		deep = &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewStructValue(deep)}}
	}
	bigPayload := &structpb.Struct{Fields: map[string]*structpb.Value{"blob": structpb.NewStringValue(strings.Repeat("p", maxPayload))}}
	hugePayload := &structpb.Struct{Fields: map[string]*structpb.Value{"blob": structpb.NewStringValue(huge)}}
	manyLabels := map[string]string{}
	for i := range server.MaxLabels + 1 {
		manyLabels[fmt.Sprintf("l%d", i)] = "v"
	}
	badIDs := append(append([]string{"", "has space", "line\nbreak", "tab\t", "ünïcødé", "nul\x00", respMeta, strings.Repeat("j", server.MaxJobIDBytes+1)}, luaMeta...), sqlMeta...)
	badPhases := append(append([]string{"Extraction", "extraction'; --", "KEYS[1]", "a.b", "a b", respMeta, strings.Repeat("p", server.MaxPhaseBytes+1)}, luaMeta...), sqlMeta...)

	// ReportFailure: the victim, with one bad field at a time.
	failure := func() *retrydv1.ReportFailureRequest {
		return &retrydv1.ReportFailureRequest{JobId: "victim", Phase: "extraction", RetryCount: 1, ErrorType: "Timeout", ErrorMessage: "again"}
	}
	rf := func(name string, cs []codes.Code, mutate func(r *retrydv1.ReportFailureRequest)) {
		r := failure()
		mutate(r)
		add("ReportFailure/"+name, cs, func(ctx context.Context) error { _, err := b.retry.ReportFailure(ctx, r); return err })
	}
	for _, id := range badIDs {
		rf("job_id="+strconv.Quote(id), invalid, func(r *retrydv1.ReportFailureRequest) { r.JobId = id })
	}
	for _, p := range badPhases {
		rf("phase="+strconv.Quote(p), invalid, func(r *retrydv1.ReportFailureRequest) { r.Phase = p })
	}
	for _, et := range append(append([]string{"", "two words", "nul\x00", strings.Repeat("E", server.MaxErrorTypeBytes+1)}, luaMeta...), sqlMeta...) {
		rf("error_type="+strconv.Quote(et), invalid, func(r *retrydv1.ReportFailureRequest) { r.ErrorType = et })
	}
	rf("error_message over 64 KiB", invalid, func(r *retrydv1.ReportFailureRequest) {
		r.ErrorMessage = strings.Repeat("m", server.MaxErrorMessageBytes+1)
	})
	rf("error_message of 2 MiB", tooLarge, func(r *retrydv1.ReportFailureRequest) { r.ErrorMessage = huge })
	for _, hs := range []uint32{1, 99, 600, math.MaxUint32} {
		rf(fmt.Sprintf("http_status=%d", hs), invalid, func(r *retrydv1.ReportFailureRequest) { r.HttpStatus = hs })
	}
	for _, rc := range []uint32{server.MaxRetryCount + 1, math.MaxUint32} {
		rf(fmt.Sprintf("retry_count=%d", rc), invalid, func(r *retrydv1.ReportFailureRequest) { r.RetryCount = rc })
	}
	for _, d := range []*durationpb.Duration{{Seconds: -1}, {Seconds: 8 * 24 * 3600}, {Seconds: math.MaxInt64}, {Nanos: -5, Seconds: 5}} {
		rf("retry_after="+d.String(), invalid, func(r *retrydv1.ReportFailureRequest) { r.RetryAfter = d })
	}
	for name, l := range map[string]map[string]string{
		"labels: a key with a space":     {"bad key": "v"},
		"labels: a Lua key":              {luaMeta[0]: "v"},
		"labels: KEYS[1]":                {"KEYS[1]": "v"},
		"labels: a key of 129 bytes":     {strings.Repeat("k", server.MaxLabelKeyBytes+1): "v"},
		"labels: a value of 1025 bytes":  {"source_name": strings.Repeat("v", server.MaxLabelValueBytes+1)},
		"labels: 65 entries":             manyLabels,
		"labels: a value of 2 MiB":       {"source_name": huge},
		"labels: an empty key, SQL meta": {"": sqlMeta[1]},
	} {
		cs := invalid
		if strings.Contains(name, "2 MiB") {
			cs = tooLarge
		}
		rf(name, cs, func(r *retrydv1.ReportFailureRequest) { r.Labels = l })
	}
	rf("payload over --max-payload-bytes", invalid, func(r *retrydv1.ReportFailureRequest) { r.Payload = bigPayload })
	rf("payload nested too deep", invalid, func(r *retrydv1.ReportFailureRequest) { r.Payload = deep })
	rf("payload of 2 MiB", tooLarge, func(r *retrydv1.ReportFailureRequest) { r.Payload = hugePayload })
	for _, l := range []string{"a b", respMeta, luaMeta[1], strings.Repeat("l", server.MaxLeaseIDBytes+1)} {
		rf("lease_id="+strconv.Quote(l), invalid, func(r *retrydv1.ReportFailureRequest) { r.LeaseId = l })
	}
	rf("started_at in year 30000", invalid, func(r *retrydv1.ReportFailureRequest) {
		r.StartedAt = &timestamppb.Timestamp{Seconds: 1 << 40}
	})
	// Well-formed values full of metacharacters reach the store's scripts
	// (as data): a report naming a lease of a job that does not exist is
	// refused, and stores nothing.
	for _, id := range validMeta {
		rf("a well-formed job_id naming nothing: "+id, noSuchJob, func(r *retrydv1.ReportFailureRequest) {
			r.JobId, r.LeaseId, r.ErrorMessage = id, id, luaMeta[0]+sqlMeta[1]+respMeta
			r.Labels = map[string]string{"source_name": luaMeta[2], "document_id": sqlMeta[0]}
		})
	}

	// ReportSuccess.
	success := func() *retrydv1.ReportSuccessRequest {
		return &retrydv1.ReportSuccessRequest{JobId: "victim", Phase: "extraction", RetryCount: 1}
	}
	rs := func(name string, cs []codes.Code, mutate func(r *retrydv1.ReportSuccessRequest)) {
		r := success()
		mutate(r)
		add("ReportSuccess/"+name, cs, func(ctx context.Context) error { _, err := b.retry.ReportSuccess(ctx, r); return err })
	}
	for _, id := range badIDs {
		rs("job_id="+strconv.Quote(id), invalid, func(r *retrydv1.ReportSuccessRequest) { r.JobId = id })
	}
	for _, p := range badPhases {
		rs("phase="+strconv.Quote(p), invalid, func(r *retrydv1.ReportSuccessRequest) { r.Phase = p })
		rs("next_phase="+strconv.Quote(p), invalid, func(r *retrydv1.ReportSuccessRequest) { r.NextPhase = p })
	}
	rs("next_payload without next_phase", invalid, func(r *retrydv1.ReportSuccessRequest) { r.NextPayload = &structpb.Struct{} })
	rs("output over --max-payload-bytes", invalid, func(r *retrydv1.ReportSuccessRequest) { r.Output = bigPayload })
	rs("next_payload nested too deep", invalid, func(r *retrydv1.ReportSuccessRequest) { r.NextPhase, r.NextPayload = "chunking", deep })
	rs("output of 2 MiB", tooLarge, func(r *retrydv1.ReportSuccessRequest) { r.Output = hugePayload })
	rs("lease_id with RESP", invalid, func(r *retrydv1.ReportSuccessRequest) { r.LeaseId = respMeta })
	rs("retry_count past the limit", invalid, func(r *retrydv1.ReportSuccessRequest) { r.RetryCount = math.MaxUint32 })
	for _, id := range validMeta {
		rs("a well-formed job_id naming nothing: "+id, noSuchJob, func(r *retrydv1.ReportSuccessRequest) {
			r.JobId, r.LeaseId, r.NextPhase = id, id, "chunking"
		})
	}

	// ExtendLease.
	el := func(name string, cs []codes.Code, r *retrydv1.ExtendLeaseRequest) {
		add("ExtendLease/"+name, cs, func(ctx context.Context) error { _, err := b.retry.ExtendLease(ctx, r); return err })
	}
	el("no lease_id", invalid, &retrydv1.ExtendLeaseRequest{JobId: "victim"})
	for _, id := range badIDs {
		el("job_id="+strconv.Quote(id), invalid, &retrydv1.ExtendLeaseRequest{JobId: id, LeaseId: "l"})
	}
	el("lease_id with a Lua string", invalid, &retrydv1.ExtendLeaseRequest{JobId: "victim", LeaseId: luaMeta[0]})
	el("extend_by 25h", invalid, &retrydv1.ExtendLeaseRequest{JobId: "victim", LeaseId: "l", ExtendBy: durationpb.New(25 * time.Hour)})
	el("extend_by negative", invalid, &retrydv1.ExtendLeaseRequest{JobId: "victim", LeaseId: "l", ExtendBy: durationpb.New(-time.Second)})
	el("lease_id of 2 MiB", tooLarge, &retrydv1.ExtendLeaseRequest{JobId: "victim", LeaseId: huge})
	for _, id := range validMeta {
		el("well-formed ids naming nothing: "+id, noSuchJob, &retrydv1.ExtendLeaseRequest{JobId: id, LeaseId: id})
	}
	el("the victim, a lease it does not hold", noSuchJob, &retrydv1.ExtendLeaseRequest{JobId: "victim", LeaseId: validMeta[0]})

	// Dispatch: refused before the stream subscribes to anything.
	dp := func(name string, cs []codes.Code, r *retrydv1.DispatchRequest) {
		add("Dispatch/"+name, cs, func(ctx context.Context) error {
			s, err := b.retry.Dispatch(ctx, r)
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		})
	}
	dp("no phases", invalid, &retrydv1.DispatchRequest{})
	for _, p := range badPhases {
		dp("phase="+strconv.Quote(p), invalid, &retrydv1.DispatchRequest{Phases: []string{"extraction", p}})
	}
	thirtyThree := make([]string, server.MaxPhasesPerStream+1)
	for i := range thirtyThree {
		thirtyThree[i] = fmt.Sprintf("p%d", i)
	}
	dp("33 phases", invalid, &retrydv1.DispatchRequest{Phases: thirtyThree})
	dp("a phase twice", invalid, &retrydv1.DispatchRequest{Phases: []string{"extraction", "extraction"}})
	dp("100000 phases", tooLarge, &retrydv1.DispatchRequest{Phases: slices.Repeat([]string{"extraction-phase"}, 100000)})
	for _, w := range []string{"clear\x1b[2J", "new\nline", "nul\x00", strings.Repeat("w", server.MaxWorkerIDBytes+1)} {
		dp("worker_id="+strconv.Quote(w), invalid, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: w})
	}
	dp("max_in_flight past the limit", invalid, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, MaxInFlight: server.MaxInFlight + 1})
	for _, d := range []time.Duration{time.Microsecond, 25 * time.Hour, -time.Second} {
		dp("lease_duration="+d.String(), invalid, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, LeaseDuration: durationpb.New(d)})
	}

	// RetryJob, CancelJob, GetJob: bad ids, and well-formed ones naming nothing.
	for _, id := range badIDs {
		add("RetryJob/job_id="+strconv.Quote(id), invalid, func(ctx context.Context) error {
			_, err := b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: id})
			return err
		})
		add("CancelJob/job_id="+strconv.Quote(id), invalid, func(ctx context.Context) error {
			_, err := b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: id})
			return err
		})
		add("GetJob/job_id="+strconv.Quote(id), invalid, func(ctx context.Context) error {
			_, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
			return err
		})
	}
	for _, p := range badPhases {
		add("RetryJob/from_phase="+strconv.Quote(p), invalid, func(ctx context.Context) error {
			_, err := b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "victim", FromPhase: p})
			return err
		})
	}
	add("CancelJob/reason over 4 KiB", invalid, func(ctx context.Context) error {
		_, err := b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: "victim", Reason: strings.Repeat("r", server.MaxReasonBytes+1)})
		return err
	})
	add("CancelJob/reason of 2 MiB", tooLarge, func(ctx context.Context) error {
		_, err := b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: "victim", Reason: huge})
		return err
	})
	for _, id := range validMeta {
		add("RetryJob/naming nothing: "+id, noSuchJob, func(ctx context.Context) error {
			_, err := b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: id, FromPhase: "extraction"})
			return err
		})
		add("CancelJob/naming nothing: "+id, noSuchJob, func(ctx context.Context) error {
			_, err := b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: id, Reason: luaMeta[0] + sqlMeta[1]})
			return err
		})
		add("GetJob/naming nothing: "+id, noSuchJob, func(ctx context.Context) error {
			_, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
			return err
		})
	}

	// ListJobs and GetRetryStats.
	lj := func(name string, cs []codes.Code, r *retrydv1.ListJobsRequest) {
		add("ListJobs/"+name, cs, func(ctx context.Context) error { _, err := b.admin.ListJobs(ctx, r); return err })
	}
	lj("state 99", invalid, &retrydv1.ListJobsRequest{State: 99})
	lj("state -1", invalid, &retrydv1.ListJobsRequest{State: -1})
	for _, p := range badPhases {
		lj("phase="+strconv.Quote(p), invalid, &retrydv1.ListJobsRequest{Phase: p})
	}
	lj("page_size 1001", invalid, &retrydv1.ListJobsRequest{PageSize: server.MaxPageSize + 1})
	lj("page_token over 1 KiB", invalid, &retrydv1.ListJobsRequest{PageToken: strings.Repeat("t", server.MaxPageTokenBytes+1)})
	lj("page_token of 2 MiB", tooLarge, &retrydv1.ListJobsRequest{PageToken: huge})
	for _, tok := range append(append([]string{respMeta, "AAAA", "MTox"}, luaMeta...), validMeta...) {
		lj("page_token="+strconv.Quote(tok), invalid, &retrydv1.ListJobsRequest{PageToken: tok})
	}
	lj("in_backoff with a failed state", invalid, &retrydv1.ListJobsRequest{InBackoff: true, State: retrydv1.JobState_JOB_STATE_FAILED})
	for _, d := range []*durationpb.Duration{{Seconds: 59 * 60}, {Seconds: 91 * 24 * 3600}, {Seconds: -3600}, {Seconds: math.MaxInt64}} {
		add("GetRetryStats/window="+d.String(), invalid, func(ctx context.Context) error {
			_, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{Window: d})
			return err
		})
	}
	for _, p := range badPhases {
		add("GetRetryStats/phase="+strconv.Quote(p), invalid, func(ctx context.Context) error {
			_, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{Phase: p})
			return err
		})
	}

	// Headers past the limit: the Go client will not even send them.
	add("ReportFailure/40 KiB of metadata", want(codes.Internal), func(ctx context.Context) error {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-junk", strings.Repeat("x", 40<<10))
		_, err := b.retry.ReportFailure(ctx, failure())
		return err
	})
	return cases
}

// warmUp runs every RPC once with valid input (so that every script a
// valid call runs is loaded, and the store holds jobs in every state) and
// leaves: victim, with a retry scheduled; held, leased to a worker for an
// hour; done, completed; redriven, failed and re-driven; dropped, canceled.
func warmUp(t *testing.T, b *bundle) {
	t.Helper()
	ctx := context.Background()
	payload := mustStruct(t, map[string]any{"document_id": "doc-1", "nested": map[string]any{"list": []any{1.0, "two"}}})
	report := func(id, phase, errorType string) {
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: id, Phase: phase, ErrorType: errorType, Payload: payload, Labels: map[string]string{"document_id": id},
			RetryAfter: durationpb.New(time.Hour),
		})
		require.NoError(t, err)
	}
	report("victim", "extraction", "Timeout")
	// held: leased through a Dispatch stream, extended, then the stream closes.
	_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "held", Phase: "chunking", ErrorType: "Timeout", Payload: payload})
	require.NoError(t, err)
	sctx, cancel := context.WithCancel(ctx)
	stream, err := b.retry.Dispatch(sctx, &retrydv1.DispatchRequest{Phases: []string{"chunking"}, WorkerId: "warm", LeaseDuration: durationpb.New(time.Hour)})
	require.NoError(t, err)
	var task *retrydv1.Task
	for task == nil {
		msg, err := stream.Recv()
		require.NoError(t, err)
		task = msg.GetTask()
	}
	cancel()
	_, err = b.retry.ExtendLease(ctx, &retrydv1.ExtendLeaseRequest{JobId: "held", LeaseId: task.GetLeaseId(), ExtendBy: durationpb.New(2 * time.Hour)})
	require.NoError(t, err)
	_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "done", Phase: "extraction", Output: payload})
	require.NoError(t, err)
	report("redriven", "kg_ingest", "ValidationError")
	_, err = b.admin.RetryJob(ctx, &retrydv1.RetryJobRequest{JobId: "redriven"})
	require.NoError(t, err)
	report("dropped", "kg_ingest", "Timeout")
	_, err = b.admin.CancelJob(ctx, &retrydv1.CancelJobRequest{JobId: "dropped", Reason: "warm-up"})
	require.NoError(t, err)
	_, err = b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "victim"})
	require.NoError(t, err)
	page, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{PageSize: 1})
	require.NoError(t, err)
	_, err = b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{PageSize: 1, PageToken: page.GetNextPageToken()})
	require.NoError(t, err)
	_, err = b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{})
	require.NoError(t, err)
	// A refused lease (the store's refusal path runs once too).
	_, err = b.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{JobId: "victim", Phase: "extraction", RetryCount: 1, LeaseId: "no-such-lease"})
	require.Equal(t, codes.FailedPrecondition, code(err), "%v", err)
}

// apiState is the whole store as the API shows it: every job with every
// attempt, and the stats.
func apiState(t *testing.T, b *bundle) string {
	t.Helper()
	ctx := context.Background()
	list, err := b.admin.ListJobs(ctx, &retrydv1.ListJobsRequest{PageSize: server.MaxPageSize})
	require.NoError(t, err)
	var out strings.Builder
	for _, s := range list.GetJobs() {
		j, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: s.GetJobId()})
		require.NoError(t, err)
		out.WriteString(prototext.Format(j) + "\n")
	}
	stats, err := b.admin.GetRetryStats(ctx, &retrydv1.GetRetryStatsRequest{})
	require.NoError(t, err)
	for _, p := range stats.GetPhases() {
		out.WriteString(prototext.Format(p) + "\n")
	}
	return out.String()
}

// redisState is every key of the Redis and its value, read by type.
func redisState(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		typ, err := rdb.Type(ctx, k).Result()
		require.NoError(t, err)
		var v any
		switch typ {
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "set":
			var m []string
			m, err = rdb.SMembers(ctx, k).Result()
			slices.Sort(m)
			v = m
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		}
		require.NoError(t, err)
		ttl, err := rdb.PTTL(ctx, k).Result()
		require.NoError(t, err)
		out[k] = fmt.Sprintf("%s %q expires=%v", typ, fmt.Sprint(v), ttl > 0)
	}
	return out
}

// cachedScripts is Redis's count of cached Lua scripts: a store that built
// script text from values would add one per distinct value.
func cachedScripts(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "number_of_cached_scripts:"); ok {
			n, err := strconv.Atoi(v)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("INFO memory has no number_of_cached_scripts:\n%s", info)
	return 0
}

// TestHostileInputAtEveryRPC throws Lua, SQL and RESP metacharacters,
// lengths and counts just past every limit, values far past them (2 MiB),
// deep payloads and oversized headers at every RPC, on both stores. Each
// request is refused with a clear code — INVALID_ARGUMENT naming the field,
// RESOURCE_EXHAUSTED for a message over the size limit, NOT_FOUND or
// FAILED_PRECONDITION for a well-formed id that names nothing — and the
// store is exactly as it was: on Redis every key and value, and the count
// of cached scripts (a script built from a value would add one); on the
// embedded store every job, attempt and counter the API shows.
func TestHostileInputAtEveryRPC(t *testing.T) {
	for _, kind := range teststore.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			opt := defaultOptions()
			opt.payload = 4096
			var (
				b   *bundle
				rdb *redis.Client
			)
			if kind == "redis" {
				srv := testredis.Start(t)
				st, err := redisstore.Open(context.Background(), srv.URL(), redisstore.Options{})
				require.NoError(t, err)
				t.Cleanup(func() { st.Close() })
				b, rdb = setupOn(t, st, opt), srv.Client()
			} else {
				b = setup(t, kind, opt)
			}
			// After the warm-up nothing is due for a phase with a stream (the
			// warm-up's own stream is full with the task it holds), so nothing
			// but the requests below could change the store.
			warmUp(t, b)

			before := apiState(t, b)
			var keysBefore map[string]string
			var scriptsBefore int
			if rdb != nil {
				keysBefore, scriptsBefore = redisState(t, rdb), cachedScripts(t, rdb)
				require.Positive(t, scriptsBefore)
			}

			cases := hostileCases(b, opt.payload)
			for _, c := range cases {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.call(ctx)
				cancel()
				require.Error(t, err, c.name)
				require.Contains(t, c.codes, code(err), "%s: %v", c.name, err)
				if code(err) == codes.InvalidArgument {
					require.Contains(t, err.Error(), ":", "%s: the message names the field: %v", c.name, err)
				}
			}
			t.Logf("%s: %d hostile requests refused; %d Redis keys and %d cached scripts before and after", kind, len(cases), len(keysBefore), scriptsBefore)

			require.Equal(t, before, apiState(t, b), "the store changed")
			if rdb != nil {
				require.Empty(t, cmp.Diff(keysBefore, redisState(t, rdb)), "Redis changed (-before +after)")
				require.Equal(t, scriptsBefore, cachedScripts(t, rdb), "a new script was cached")
			}
		})
	}
}
