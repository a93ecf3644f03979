package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// retrydBin is cmd/retryd, built once for the smoke tests.
var retrydBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "retrybench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	retrydBin, err = buildRetryd(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// jsonFields are the fields of issue 5's result line, and no others.
var jsonFields = []string{"system", "store", "point", "N", "K", "D_ms", "C", "attempts", "wall_s", "attempts_per_s",
	"lag_ms", "early", "duplicates", "bytes_per_pending"}

// runBench runs the command and returns its exit status, the decoded last
// line of stdout, and stderr.
func runBench(t *testing.T, args ...string) (int, map[string]any, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, append(args, "--progress", "never"), &stdout, &stderr)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var res map[string]any
	if last := lines[len(lines)-1]; last != "" {
		require.NoError(t, json.Unmarshal([]byte(last), &res), "stdout: %s\nstderr: %s", stdout.String(), stderr.String())
		require.ElementsMatch(t, jsonFields, slices.Collect(maps.Keys(res)), "the JSON line has exactly the issue's fields")
	}
	return code, res, stderr.String()
}

// TestCycleSmoke runs a tiny retry cycle on both stores, each with a
// spawned retryd: the run passes its self-checks and reports them.
func TestCycleSmoke(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "embedded"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			code, res, stderr := runBench(t, "--spawn", store, "--retryd", retrydBin, "--point", "lag",
				"--n", "30", "--k", "2", "--delay", "20ms", "--concurrency", "8", "--streams", "3", "-v")
			require.Equal(t, exitOK, code, stderr)
			require.Equal(t, "retryd", res["system"])
			require.Equal(t, store, res["store"])
			require.Equal(t, "lag", res["point"])
			require.EqualValues(t, 30, res["N"])
			require.EqualValues(t, 2, res["K"])
			require.EqualValues(t, 20, res["D_ms"])
			require.EqualValues(t, 8, res["C"])
			require.EqualValues(t, 90, res["attempts"], "30 jobs × (2 failures + 1 success)")
			require.EqualValues(t, 0, res["early"])
			require.EqualValues(t, 0, res["duplicates"])
			require.Nil(t, res["bytes_per_pending"])
			require.Greater(t, res["attempts_per_s"], 0.0)
			lag, ok := res["lag_ms"].(map[string]any)
			require.True(t, ok, "lag_ms: %v", res["lag_ms"])
			for _, q := range []string{"p50", "p90", "p99", "max", "min"} {
				require.Contains(t, lag, q)
			}
			require.GreaterOrEqual(t, lag["min"], 0.0, "never early, so no negative lag")
			require.LessOrEqual(t, lag["p50"], lag["p99"])
			require.Contains(t, stderr, "30 jobs completed with exactly 3 attempts each")
			require.Contains(t, stderr, "(60 retries;")
			if store == "redis" {
				require.Contains(t, stderr, "commands per attempt")
				require.Contains(t, stderr, "EVALSHA")
			}
		})
	}
}

// TestMemorySmoke runs the memory point small: every job stays in backoff
// and the bytes per pending retry are measured on both stores.
func TestMemorySmoke(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "embedded"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			code, res, stderr := runBench(t, "--spawn", store, "--retryd", retrydBin, "--point", "memory", "--n", "40", "--concurrency", "4")
			require.Equal(t, exitOK, code, stderr)
			require.Equal(t, "memory", res["point"])
			require.EqualValues(t, 40, res["attempts"])
			require.EqualValues(t, float64(time.Hour/time.Millisecond), res["D_ms"])
			require.Nil(t, res["lag_ms"], "nothing is dispatched")
			require.NotNil(t, res["bytes_per_pending"])
			require.Contains(t, stderr, "40 jobs in backoff")
		})
	}
}

// TestInProcessProfile runs retryd inside the test process with a CPU
// profile, the mode used to profile retryd under load.
func TestInProcessProfile(t *testing.T) {
	t.Parallel()
	cpu := filepath.Join(t.TempDir(), "cpu.out")
	code, res, stderr := runBench(t, "--spawn", "embedded", "--in-process", "--cpuprofile", cpu,
		"--n", "20", "--k", "1", "--concurrency", "4")
	require.Equal(t, exitOK, code, stderr)
	require.EqualValues(t, 40, res["attempts"])
	fi, err := os.Stat(cpu)
	require.NoError(t, err)
	require.Positive(t, fi.Size())
}

// TestTargetWithOtherPolicy: a --target retryd whose delays are not the
// workload's is refused with a message saying how to run it, not measured.
func TestTargetWithOtherPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o, err := parseFlags([]string{"--spawn", "embedded", "--retryd", retrydBin, "--delay", "3s"}, &bytes.Buffer{})
	require.NoError(t, err)
	env, err := setupEnvironment(ctx, o, retrydBin)
	require.NoError(t, err)
	defer env.close()
	code, _, stderr := runBench(t, "--target", env.addr, "--n", "5", "--delay", "10ms", "--concurrency", "2")
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "run retryd with --jitter 0 --retry-delays 10ms")
}

// TestCheckJob: the read-back check names what is wrong with a job.
func TestCheckJob(t *testing.T) {
	t.Parallel()
	r := &runner{o: options{k: 2, phase: "p"}}
	attempt := func(rc uint32, st retrydv1.AttemptStatus) *retrydv1.Attempt {
		return &retrydv1.Attempt{Phase: "p", RetryCount: rc, Status: st, Cycle: 1}
	}
	failed, succeeded := retrydv1.AttemptStatus_ATTEMPT_STATUS_FAILED, retrydv1.AttemptStatus_ATTEMPT_STATUS_SUCCEEDED
	completed := retrydv1.JobState_JOB_STATE_COMPLETED
	for _, tc := range []struct {
		name string
		job  *retrydv1.Job
		want string
	}{
		{"right", &retrydv1.Job{State: completed, Attempts: []*retrydv1.Attempt{attempt(0, failed), attempt(1, failed), attempt(2, succeeded)}}, ""},
		{"an attempt too many", &retrydv1.Job{State: completed, Attempts: []*retrydv1.Attempt{
			attempt(0, failed), attempt(1, failed), attempt(1, failed), attempt(2, succeeded)}}, "4 attempts, want exactly 3"},
		{"not completed", &retrydv1.Job{State: retrydv1.JobState_JOB_STATE_PROCESSING, Attempts: []*retrydv1.Attempt{
			attempt(0, failed), attempt(1, failed)}}, "state JOB_STATE_PROCESSING, want completed; 2 attempts"},
		{"succeeded early", &retrydv1.Job{State: completed, Attempts: []*retrydv1.Attempt{
			attempt(0, failed), attempt(1, succeeded), attempt(2, succeeded)}}, "attempt 2 is retry_count 1 ATTEMPT_STATUS_SUCCEEDED"},
	} {
		got := r.checkJob(tc.job)
		if tc.want == "" {
			require.Empty(t, got, tc.name)
		} else {
			require.Contains(t, got, tc.want, tc.name)
		}
	}
}

// TestLagQuantiles: nearest-rank quantiles in milliseconds.
func TestLagQuantiles(t *testing.T) {
	t.Parallel()
	var lags []int64
	for i := 100; i >= 1; i-- {
		lags = append(lags, int64(i)*int64(time.Millisecond))
	}
	require.Equal(t, &lagStats{P50: 50, P90: 90, P99: 99, Max: 100, Min: 1}, lagQuantiles(lags))
	require.Nil(t, lagQuantiles(nil))
}

// TestJobIDs: job ids are 36 bytes, like a UUID, and map back to their
// index; another run's ids do not.
func TestJobIDs(t *testing.T) {
	t.Parallel()
	r := &runner{runID: "0123abcd", jobs: make([]job, 20)}
	id := r.jobID(17)
	require.Len(t, id, 36)
	i, ok := r.jobIndex(id)
	require.True(t, ok)
	require.Equal(t, 17, i)
	other := &runner{runID: "ffff0000"}
	_, ok = r.jobIndex(other.jobID(17))
	require.False(t, ok)
	_, ok = r.jobIndex(r.jobID(20))
	require.False(t, ok, "out of range")
}

func TestFlags(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"--spawn", "redis", "--point", "lag", "--n", "7"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 7, o.n)
	require.Equal(t, 3, o.k)
	require.Equal(t, 2*time.Second, o.delay)
	require.Equal(t, 50, o.c)
	for _, bad := range [][]string{
		{},
		{"--spawn", "redis", "--target", "x:1"},
		{"--spawn", "mysql"},
		{"--spawn", "redis", "--point", "fast"},
		{"--spawn", "redis", "--delay", "-1s"},
		{"--target", "x:1", "--in-process"},
	} {
		_, err := parseFlags(bad, &bytes.Buffer{})
		require.Error(t, err, "%q", bad)
	}
}

// TestParseTask: the stream's raw messages are read as the generated code
// reads them, payload and labels skipped.
func TestParseTask(t *testing.T) {
	t.Parallel()
	payload, err := structpb.NewStruct(map[string]any{"document_id": "doc-1", "n": 3.0, "nested": map[string]any{"a": true}})
	require.NoError(t, err)
	due := time.Date(2026, 11, 28, 9, 0, 1, 123456000, time.UTC)
	msg := &retrydv1.DispatchResponse{Kind: &retrydv1.DispatchResponse_Task{Task: &retrydv1.Task{
		JobId: "job-1", Phase: "extraction", RetryCount: 3, Payload: payload,
		Labels: map[string]string{"source_name": "x.pdf"}, LeaseId: "lease-9",
		LeaseExpiresAt: timestamppb.New(due.Add(time.Minute)), DueAt: timestamppb.New(due), Cycle: 2,
	}}}
	b, err := proto.Marshal(msg)
	require.NoError(t, err)
	got, ok, err := parseTask(b)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, wireTask{jobID: "job-1", retryCount: 3, leaseID: "lease-9", dueNanos: due.UnixNano()}, got)

	hb, err := proto.Marshal(&retrydv1.DispatchResponse{Kind: &retrydv1.DispatchResponse_Heartbeat{
		Heartbeat: &retrydv1.Heartbeat{SentAt: timestamppb.New(due)}}})
	require.NoError(t, err)
	_, ok, err = parseTask(hb)
	require.NoError(t, err)
	require.False(t, ok, "a heartbeat is not a task")

	_, _, err = parseTask(b[:len(b)-3])
	require.Error(t, err, "a truncated message")
}
