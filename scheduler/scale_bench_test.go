package scheduler_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/boltstore"
	"github.com/retryd/retryd/store/redisstore"
)

// BenchmarkScale is issue 5's scale check: the cost of the hot store
// operations with 1,000 and with 1,000,000 retries pending, on both
// stores. It should differ by far less than 2×: every index is ordered
// (a Redis sorted set, a B+tree), so an operation touches O(log n) of it.
//
// The pending retries are seeded directly through the store (no gRPC),
// 64 reports at a time, and are due in a day, so that they stay pending;
// each measured operation works on extra jobs seeded untimed for it, and
// those are canceled afterwards so the pending count stays where it was.
// Seeding a million retries takes a minute or two per store and about
// 1 GB (Redis memory, or the embedded store's file), which is why this is
// a benchmark and not a test:
//
//	go test -run '^$' -bench Scale -benchtime 2000x -timeout 30m ./scheduler/
//
// Operations:
//   - claim: Claim of one due retry (a task handed to a worker);
//   - report: RecordFailure of a leased retry that fails again and is
//     scheduled again (the report of the retry cycle).
//
// Latency (ns/op) is one operation at a time, so it includes a round trip
// to Redis or an fsync of the embedded store, and moves with the machine's
// load; the work per operation is the steadier measure: with Redis,
// redis-cmds/op (INFO commandstats) and redis-cpu-us/op (INFO cpu, the
// Redis server's CPU time per operation), and for both stores B/op and
// allocs/op of the store client.
func BenchmarkScale(b *testing.B) {
	for _, kind := range []string{"redis", "bolt"} {
		b.Run(kind, func(b *testing.B) {
			for _, pending := range []int{1_000, 1_000_000} {
				b.Run(fmt.Sprintf("pending-%d", pending), func(b *testing.B) {
					st, rc := scaleStore(b, kind)
					seedPending(b, st, pending)
					b.Run("claim", func(b *testing.B) { benchScaleClaim(b, st, rc) })
					b.Run("report", func(b *testing.B) { benchScaleReport(b, st, rc) })
				})
			}
		})
	}
}

// scaleT0 is the benchmark's "now": the seeded retries are due a day later.
var scaleT0 = time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)

// scaleStore opens an empty store of kind; rc reads Redis's INFO (nil for bolt).
func scaleStore(b *testing.B, kind string) (store.Store, *redis.Client) {
	b.Helper()
	switch kind {
	case "redis":
		srv := testredis.Start(b)
		st, err := redisstore.Open(context.Background(), srv.URL(), redisstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = st.Close() })
		return st, srv.Client()
	default:
		st, err := boltstore.Open(filepath.Join(b.TempDir(), "retryd.db"), boltstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = st.Close() })
		return st, nil
	}
}

// scaleFailure is the first failure of a job, its retry due at due.
func scaleFailure(id string, now, due time.Time) store.Failure {
	return store.Failure{
		JobID: id, Phase: "extraction", ErrorType: "requests.exceptions.ConnectionError",
		ErrorMessage: "connection reset by peer", HTTPStatus: 503,
		Labels: map[string]string{"document_id": id, "source_name": "scale"},
		Now:    now,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "ConnectionError is retryable.",
			NextRetryCount: 1, Delay: due.Sub(now), DueAt: due},
	}
}

// parallel runs fn(i) for i in [0, n) on 64 goroutines.
func parallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		b.Fatal(*p)
	}
}

// seedPending schedules n retries due in a day.
func seedPending(b *testing.B, st store.Store, n int) {
	b.Helper()
	start := time.Now()
	parallel(b, n, func(i int) error {
		_, err := st.RecordFailure(context.Background(), scaleFailure(fmt.Sprintf("pending-%08d", i), scaleT0, scaleT0.Add(24*time.Hour)))
		return err
	})
	b.Logf("seeded %d pending retries in %v", n, time.Since(start).Round(time.Millisecond))
}

// round numbers the jobs of each measured run apart.
var round atomic.Int64

// dueJobs seeds n jobs whose retry is due at scaleT0 (untimed) and
// registers their cancellation, so that the pending count comes back.
func dueJobs(b *testing.B, st store.Store, n int) []string {
	b.Helper()
	r := round.Add(1)
	ids := make([]string, n)
	parallel(b, n, func(i int) error {
		ids[i] = fmt.Sprintf("due-%d-%08d", r, i)
		_, err := st.RecordFailure(context.Background(), scaleFailure(ids[i], scaleT0.Add(-time.Minute), scaleT0))
		return err
	})
	b.Cleanup(func() {
		parallel(b, n, func(i int) error {
			_, err := st.CancelJob(context.Background(), ids[i], "benchmark cleanup", scaleT0)
			return err
		})
	})
	return ids
}

func benchScaleClaim(b *testing.B, st store.Store, rc *redis.Client) {
	ctx := context.Background()
	dueJobs(b, st, b.N)
	measureScale(b, rc, func() {
		for range b.N {
			tasks, err := st.Claim(ctx, store.ClaimRequest{
				Phases: []string{"extraction"}, Limit: 1, Now: scaleT0, LeaseFor: time.Hour, WorkerID: "scale",
			})
			if err != nil || len(tasks) != 1 {
				b.Fatal(err, len(tasks))
			}
		}
	})
}

func benchScaleReport(b *testing.B, st store.Store, rc *redis.Client) {
	ctx := context.Background()
	dueJobs(b, st, b.N)
	var tasks []store.Task
	for len(tasks) < b.N {
		got, err := st.Claim(ctx, store.ClaimRequest{
			Phases: []string{"extraction"}, Limit: min(500, b.N-len(tasks)), Now: scaleT0, LeaseFor: time.Hour, WorkerID: "scale",
		})
		if err != nil || len(got) == 0 {
			b.Fatal(err, len(got))
		}
		tasks = append(tasks, got...)
	}
	now := scaleT0.Add(time.Second)
	measureScale(b, rc, func() {
		for _, t := range tasks {
			_, err := st.RecordFailure(ctx, store.Failure{
				JobID: t.JobID, Phase: t.Phase, RetryCount: t.RetryCount, LeaseID: t.LeaseID,
				ErrorType: "requests.exceptions.ConnectionError", ErrorMessage: "connection reset by peer", HTTPStatus: 503,
				Now: now,
				Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "ConnectionError is retryable.",
					NextRetryCount: t.RetryCount + 1, Delay: 24 * time.Hour, DueAt: now.Add(24 * time.Hour)},
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// measureScale times fn and, with Redis, counts the commands it ran and
// the CPU time Redis spent on them.
func measureScale(b *testing.B, rc *redis.Client, fn func()) {
	b.Helper()
	b.ReportAllocs()
	cmds, cpu := redisCommands(b, rc), redisCPU(b, rc)
	b.ResetTimer()
	fn()
	b.StopTimer()
	if rc != nil {
		b.ReportMetric(float64(redisCommands(b, rc)-cmds)/float64(b.N), "redis-cmds/op")
		b.ReportMetric(float64((redisCPU(b, rc)-cpu).Microseconds())/float64(b.N), "redis-cpu-us/op")
	}
}

// redisCPU is the CPU time Redis has used (INFO cpu: user and system).
func redisCPU(b *testing.B, rc *redis.Client) time.Duration {
	b.Helper()
	if rc == nil {
		return 0
	}
	info, err := rc.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for line := range strings.SplitSeq(info, "\n") {
		for _, field := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), field); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatal(err)
				}
				total += f
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// redisCommands sums INFO commandstats calls, INFO itself left out.
func redisCommands(b *testing.B, rc *redis.Client) int64 {
	b.Helper()
	if rc == nil {
		return 0
	}
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || name == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		n += v
	}
	return n
}
