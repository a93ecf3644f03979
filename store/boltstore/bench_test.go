package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/retryd/retryd/store"
)

// reportClients is the number of concurrent clients of issue 3's benchmark.
const reportClients = 50

// BenchmarkRecordFailureParallel measures ReportFailure's store half with 50
// concurrent clients, each recording the first failure of a new job and
// scheduling its retry: with group commit (DB.Batch, the store as shipped)
// and with one read-write transaction, hence one fsync, per report.
//
//	go test -run '^$' -bench RecordFailure -benchtime 3s ./store/boltstore/
func BenchmarkRecordFailureParallel(b *testing.B) {
	for _, mode := range []string{"GroupCommit", "DBBatch", "FsyncPerReport"} {
		b.Run(mode, func(b *testing.B) {
			s := benchStore(b, mode)
			var next atomic.Int64
			// RunParallel starts parallelism × GOMAXPROCS goroutines.
			b.SetParallelism((reportClients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			cpu := cpuTime(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					benchReport(b, s, next.Add(1))
				}
			})
			b.ReportMetric(float64((cpuTime(b)-cpu).Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
		})
	}
}

// BenchmarkRecordFailureSerial is the latency of one client alone, which
// pays the batch delay without sharing the commit.
func BenchmarkRecordFailureSerial(b *testing.B) {
	for _, mode := range []string{"GroupCommit", "DBBatch", "FsyncPerReport"} {
		b.Run(mode, func(b *testing.B) {
			s := benchStore(b, mode)
			var i int64
			for b.Loop() {
				i++
				benchReport(b, s, i)
			}
		})
	}
}

// benchStore opens a store that commits the way mode says: GroupCommit
// (as shipped), DBBatch (bbolt's DB.Batch with its default 10ms delay and
// with 1ms) or FsyncPerReport (one DB.Update per change).
func benchStore(b *testing.B, mode string) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "retryd.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	switch mode {
	case "GroupCommit":
	case "DBBatch":
		s.db.MaxBatchDelay = time.Millisecond
		s.commit = s.db.Batch
	case "FsyncPerReport":
		s.commit = s.db.Update
	default:
		b.Fatalf("unknown mode %q", mode)
	}
	return s
}

var benchBase = time.Date(2026, time.March, 2, 9, 0, 0, 0, time.UTC)

func benchReport(b *testing.B, s *Store, i int64) {
	now := benchBase.Add(time.Duration(i) * time.Millisecond)
	_, err := s.RecordFailure(context.Background(), store.Failure{
		JobID:        fmt.Sprintf("job-%09d", i),
		Phase:        "extraction",
		ErrorType:    "requests.exceptions.ConnectionError",
		ErrorMessage: "connection reset by peer",
		HTTPStatus:   503,
		Payload:      []byte(`{"pipeline_job_id":"x","document_id":"d","source_location":"s3://docs/x.pdf"}`),
		Labels:       map[string]string{"document_id": "d", "source_name": "x.pdf"},
		Now:          now,
		Verdict: store.Verdict{
			Decision: store.DecisionRetry, Retryable: true, Reason: "ConnectionError is retryable.",
			NextRetryCount: 1, Delay: time.Minute, DueAt: now.Add(time.Minute),
		},
	})
	if err != nil {
		b.Error(err)
	}
}

// cpuTime is the CPU time (user and system) this process has used: per
// operation, a steadier figure than the wall clock on a shared machine,
// where the fsyncs and the neighbours decide the latency.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
