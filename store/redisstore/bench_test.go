package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// The benchmarks run against a real redis-server on a unix socket and
// report, besides ns/op:
//   - redis-cmds/op: commands Redis executed per operation, from INFO
//     commandstats (EVALSHA counts once, and every command a script calls
//     counts too);
//   - bytes/retry: growth of used_memory per pending retry created,
//     payload bytes subtracted (BenchmarkRecordFailure/first-report).

// benchPayload is a typical task payload (an encoded Struct of ~150 bytes).
var benchPayload = []byte(`{"pipeline_job_id":"5f0c3a1e-8d2b-4c57-9a41-0b6f1e2d3c4b","document_id":"doc-000123","source_location":"s3://bucket/docs/doc-000123.pdf"}`)

func benchStore(b *testing.B) (*Store, *redis.Client) {
	b.Helper()
	srv := testredis.Start(b)
	s, err := Open(context.Background(), srv.URL(), Options{})
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	return s, srv.Client()
}

// benchFailure is the first failure of job i.
func benchFailure(i int, now time.Time) store.Failure {
	return store.Failure{
		JobID: fmt.Sprintf("5f0c3a1e-8d2b-4c57-9a41-%012d", i), Phase: "extraction",
		ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: "HTTPSConnectionPool: Max retries exceeded (connection reset)",
		HTTPStatus: 503, Payload: benchPayload,
		Labels: map[string]string{"document_id": fmt.Sprintf("doc-%06d", i), "source_name": "manual_upload"},
		Now:    now,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "ConnectionError is retryable; retry 1 of 3 in 1m0s.",
			NextRetryCount: 1, Delay: time.Minute, DueAt: now.Add(time.Minute)},
	}
}

// commandCount is the number of commands Redis has executed, INFO excluded.
func commandCount(b *testing.B, c *redis.Client) int64 {
	b.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(b, err)
	var n int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || name == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(calls, 10, 64)
		require.NoError(b, err)
		n += v
	}
	return n
}

// commandCalls is how many times Redis has run the command cmd (lower
// case), from INFO commandstats.
func commandCalls(t testing.TB, c *redis.Client, cmd string) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(t, err)
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":calls="); ok {
			calls, _, _ := strings.Cut(rest, ",")
			n, err := strconv.ParseInt(calls, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	return 0
}

func usedMemory(b *testing.B, c *redis.Client) int64 {
	b.Helper()
	info, err := c.Info(context.Background(), "memory").Result()
	require.NoError(b, err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(b, err)
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}

// measure runs fn b.N times between two readings of the command counter.
func measure(b *testing.B, c *redis.Client, fn func(i int)) {
	b.Helper()
	before := commandCount(b, c)
	b.ResetTimer()
	for i := range b.N {
		fn(i)
	}
	b.StopTimer()
	b.ReportMetric(float64(commandCount(b, c)-before)/float64(b.N), "redis-cmds/op")
}

func BenchmarkRecordFailure(b *testing.B) {
	ctx := context.Background()
	// The first report of a job: creates it and schedules retry 1.
	b.Run("first-report", func(b *testing.B) {
		s, c := benchStore(b)
		mem := usedMemory(b, c)
		measure(b, c, func(i int) {
			if _, err := s.RecordFailure(ctx, benchFailure(i, t0)); err != nil {
				b.Fatal(err)
			}
		})
		grown := usedMemory(b, c) - mem - int64(b.N*len(benchPayload))
		b.ReportMetric(float64(grown)/float64(b.N), "bytes/retry")
	})
	// A dispatched retry fails: ends the lease and schedules the next one.
	b.Run("leased-retry", func(b *testing.B) {
		s, c := benchStore(b)
		tasks := leasedTasks(b, s, b.N)
		measure(b, c, func(i int) {
			f := benchFailure(i, t0.Add(2*time.Minute))
			f.RetryCount, f.LeaseID, f.Payload, f.Labels = 1, tasks[i].LeaseID, nil, nil
			f.Verdict.NextRetryCount, f.Verdict.DueAt = 2, f.Now.Add(5*time.Minute)
			if _, err := s.RecordFailure(ctx, f); err != nil {
				b.Fatal(err)
			}
		})
	})
	// A repeat of an applied report: answered from the stored verdict.
	b.Run("duplicate", func(b *testing.B) {
		s, c := benchStore(b)
		_, err := s.RecordFailure(ctx, benchFailure(0, t0))
		require.NoError(b, err)
		measure(b, c, func(int) {
			if res, err := s.RecordFailure(ctx, benchFailure(0, t0)); err != nil || !res.Duplicate {
				b.Fatal(err, res)
			}
		})
	})
}

// BenchmarkRecordSuccess: a dispatched retry succeeds and completes its job.
func BenchmarkRecordSuccess(b *testing.B) {
	ctx := context.Background()
	b.Run("leased-complete", func(b *testing.B) {
		s, c := benchStore(b)
		tasks := leasedTasks(b, s, b.N)
		measure(b, c, func(i int) {
			t := tasks[i]
			if _, err := s.RecordSuccess(ctx, store.Success{
				JobID: t.JobID, Phase: t.Phase, RetryCount: t.RetryCount, LeaseID: t.LeaseID, Now: t0.Add(2 * time.Minute),
			}); err != nil {
				b.Fatal(err)
			}
		})
	})
}

func BenchmarkClaim(b *testing.B) {
	ctx := context.Background()
	for _, limit := range []int{1, 10} {
		b.Run(fmt.Sprintf("limit-%d", limit), func(b *testing.B) {
			s, c := benchStore(b)
			n := b.N * limit
			schedule(b, s, n)
			measure(b, c, func(int) {
				tasks, err := s.Claim(ctx, store.ClaimRequest{
					Phases: []string{"extraction"}, Limit: limit, Now: t0.Add(time.Hour), LeaseFor: time.Minute, WorkerID: "bench",
				})
				if err != nil || len(tasks) != limit {
					b.Fatal(err, len(tasks))
				}
			})
		})
	}
}

// schedule creates n scheduled retries (not timed).
func schedule(b *testing.B, s *Store, n int) {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	for i := range n {
		_, err := s.RecordFailure(context.Background(), benchFailure(i, t0))
		require.NoError(b, err)
	}
}

// leasedTasks schedules and claims n retries (not timed), in job order.
func leasedTasks(b *testing.B, s *Store, n int) []store.Task {
	b.Helper()
	schedule(b, s, n)
	b.StopTimer()
	defer b.StartTimer()
	byJob := map[string]store.Task{}
	for len(byJob) < n {
		tasks, err := s.Claim(context.Background(), store.ClaimRequest{
			Phases: []string{"extraction"}, Limit: 500, Now: t0.Add(time.Hour), LeaseFor: time.Hour, WorkerID: "bench",
		})
		require.NoError(b, err)
		require.NotEmpty(b, tasks)
		for _, t := range tasks {
			byJob[t.JobID] = t
		}
	}
	out := make([]store.Task, n)
	for i := range n {
		out[i] = byJob[benchFailure(i, t0).JobID]
	}
	return out
}
