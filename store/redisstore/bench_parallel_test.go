package redisstore

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
)

// benchReporters is the number of goroutines reporting at once in the
// parallel benchmarks: the load of retrybench's throughput point (50
// concurrent workers).
const benchReporters = 50

// BenchmarkRecordFailureParallel: first reports of distinct jobs from 50
// goroutines at once, the load under which concurrent scripts share
// pipelines (batch.go). Besides ns/op (wall time per report, all
// goroutines together) it reports:
//   - reports/s;
//   - redis-cmds/op (INFO commandstats, as in bench_test.go);
//   - redis-cpu-us/op: CPU time of the Redis server per report (INFO cpu);
//   - client-cpu-us/op: CPU time of this process per report (getrusage),
//     the store's and go-redis's share of retryd's CPU.
//
// Over TCP on loopback (the usual deployment: Redis on another host) and
// on a unix socket; with 1, 2 or 4 batches in flight (batchesInFlight),
// and unbatched: with a slot for every caller, each call is a script.Run
// of its own, as before batching.
func BenchmarkRecordFailureParallel(b *testing.B) {
	for _, network := range []string{"tcp", "unix"} {
		for _, inFlight := range []int{1, 2, 4, math.MaxInt} {
			name := fmt.Sprintf("%s/in-flight-%d", network, inFlight)
			if inFlight == math.MaxInt {
				name = network + "/unbatched"
			}
			b.Run(name, func(b *testing.B) {
				var opts []testredis.Option
				if network == "tcp" {
					opts = append(opts, testredis.TCP())
				}
				srv := testredis.Start(b, opts...)
				s, err := Open(context.Background(), srv.URL(), Options{})
				require.NoError(b, err)
				b.Cleanup(func() { _ = s.Close() })
				s.batch.maxInFlight = inFlight
				c := srv.Client()

				var next atomic.Int64
				parallelism := (benchReporters + gomaxprocs() - 1) / gomaxprocs()
				b.SetParallelism(parallelism)
				measureParallel(b, c, func(pb *testing.PB) {
					ctx := context.Background()
					for pb.Next() {
						i := int(next.Add(1))
						if _, err := s.RecordFailure(ctx, benchFailure(i, t0)); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// measureParallel runs body with b.RunParallel between two readings of
// Redis's command counter and CPU time and of this process's CPU time.
func measureParallel(b *testing.B, c *redis.Client, body func(*testing.PB)) {
	b.Helper()
	cmds, redisCPU, selfCPU := commandCount(b, c), redisCPUTime(b, c), processCPUTime(b)
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(body)
	b.StopTimer()
	elapsed := time.Since(start)
	n := float64(b.N)
	b.ReportMetric(n/elapsed.Seconds(), "reports/s")
	b.ReportMetric(float64(commandCount(b, c)-cmds)/n, "redis-cmds/op")
	b.ReportMetric(float64((redisCPUTime(b, c)-redisCPU).Microseconds())/n, "redis-cpu-us/op")
	b.ReportMetric(float64((processCPUTime(b)-selfCPU).Microseconds())/n, "client-cpu-us/op")
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

// redisCPUTime is the CPU time the Redis server has used (INFO cpu: user
// and system), as BenchmarkScale reads it.
func redisCPUTime(b *testing.B, c *redis.Client) time.Duration {
	b.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	require.NoError(b, err)
	var total float64
	for line := range strings.SplitSeq(info, "\n") {
		for _, field := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), field); ok {
				f, err := strconv.ParseFloat(v, 64)
				require.NoError(b, err)
				total += f
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// processCPUTime is the CPU time (user and system) this process has used.
func processCPUTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
