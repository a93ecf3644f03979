package boltstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/retryd/retryd/store"
)

// footprintPayload is the size of retrybench's payload (an encoded Struct
// of three short strings), so that bytes per retry compare with its memory
// point, which subtracts it.
var footprintPayload = make([]byte, 144)

// footprintID is a random UUID-shaped job id (36 bytes): production job ids
// arrive in no particular key order.
func footprintID() string {
	var r [16]byte
	_, _ = rand.Read(r[:])
	h := hex.EncodeToString(r[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// footprintFailure is the first failure of a job as retrybench reports it:
// the same error type, message, labels and payload size, a policy-shaped
// reason, and its retry due at due.
func footprintFailure(id string, now, due time.Time) store.Failure {
	return store.Failure{
		JobID:        id,
		Phase:        "retrybench",
		ErrorType:    "requests.exceptions.ConnectionError",
		ErrorMessage: "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded (connection reset by peer)",
		HTTPStatus:   503,
		Payload:      footprintPayload,
		Labels:       map[string]string{"document_id": "doc-000000", "source_name": "retrybench"},
		Now:          now,
		Verdict: store.Verdict{
			Decision: store.DecisionRetry, Retryable: true,
			Reason:         "retry 1 of 3 in 1h: ConnectionError is a retryable error type",
			NextRetryCount: 1, Delay: due.Sub(now), DueAt: due,
		},
	}
}

// seedFootprint records n first failures from 50 concurrent clients (so
// that commits are grouped as under load), the i-th at now + i µs with its
// retry due delay later, give or take jitter (a fraction: 0.1 is ±10%,
// drawn at random).
func seedFootprint(b *testing.B, s *Store, n int, now time.Time, delay time.Duration, jitter float64) {
	b.Helper()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range reportClients {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				at := now.Add(time.Duration(i) * time.Microsecond)
				d := delay
				if jitter > 0 {
					d += time.Duration((mrand.Float64()*2 - 1) * jitter * float64(delay))
				}
				if _, err := s.RecordFailure(context.Background(), footprintFailure(footprintID(), at, at.Add(d))); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkFootprint is the embedded store's share of retrybench's memory
// point: the bytes of file and of B+tree pages per pending retry, payload
// aside, after 20,000 first failures (one a microsecond) with retries due
// an hour later: exactly (retrybench's --jitter 0), and give or take 20%
// (retryd's default jitter), which inserts into the due index out of key
// order. The bucket metrics (jobs-B/retry, …) are each bucket's allocated
// pages per retry, which say where the file goes.
//
//	go test -run '^$' -bench Footprint -benchtime 1x ./store/boltstore/
func BenchmarkFootprint(b *testing.B) {
	const m = 20_000
	for _, jitter := range []float64{0, 0.2} {
		b.Run(fmt.Sprintf("jitter-%.0f%%", jitter*100), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				s := benchStore(b, "GroupCommit")
				before := fileSize(b, s.Path())
				b.StartTimer()
				seedFootprint(b, s, m, benchBase, time.Hour, jitter)
				b.StopTimer()
				grown := fileSize(b, s.Path()) - before
				b.ReportMetric(float64(grown)/m-float64(len(footprintPayload)), "file-B/retry")
				var total int
				err := s.db.View(func(tx *bolt.Tx) error {
					for _, name := range allBuckets {
						st := tx.Bucket(name).Stats()
						alloc := st.BranchAlloc + st.LeafAlloc
						total += alloc
						if alloc > 0 && string(name) != "meta" {
							b.ReportMetric(float64(alloc)/m, string(name)+"-B/retry")
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(total)/m-float64(len(footprintPayload)), "pages-B/retry")
				st := s.db.Stats()
				b.ReportMetric(float64((st.FreePageN+st.PendingPageN)*s.db.Info().PageSize)/m, "free-B/retry")
				b.StartTimer()
			}
		})
	}
}

func fileSize(b *testing.B, path string) int64 {
	b.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// BenchmarkReportPages is the retry cycle one step at a time with 1,000
// and 100,000 retries pending: a claim of the earliest due retry, then that
// leased retry's failure, scheduled again behind all the others (so that
// the pending count stays put and every report is of a job last updated
// one round ago, as in the retry cycle). ns/op is the report alone; the
// page counts are bbolt's pages written (dirty pages and the meta page) per
// commit of each, which grow with the depth of every tree a change
// touches. The scale check (scheduler's BenchmarkScale) measures latency
// at a million through the store interface.
//
//	go test -run '^$' -bench ReportPages -benchtime 2000x ./store/boltstore/
func BenchmarkReportPages(b *testing.B) {
	for _, pending := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("pending-%d", pending), func(b *testing.B) {
			s := benchStore(b, "GroupCommit")
			// Due an hour after base, one a microsecond apart.
			seedFootprint(b, s, pending, benchBase, time.Hour, 0)
			ctx := context.Background()
			written := func() int64 { st := s.db.Stats(); return st.TxStats.GetWrite() }
			round := time.Duration(pending) * time.Millisecond
			var claimPages, reportPages int64
			now := benchBase.Add(2 * time.Hour)
			for b.Loop() {
				b.StopTimer()
				now = now.Add(time.Millisecond)
				w := written()
				tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"retrybench"}, Limit: 1, Now: now, LeaseFor: time.Minute, WorkerID: "w"})
				if err != nil || len(tasks) != 1 {
					b.Fatalf("claim: %v %+v", err, tasks)
				}
				claimPages += written() - w
				task := tasks[0]
				f := footprintFailure(task.JobID, now, now.Add(round))
				f.RetryCount, f.LeaseID, f.Payload, f.Labels = task.RetryCount, task.LeaseID, nil, nil
				f.Verdict.NextRetryCount = task.RetryCount + 1
				w = written()
				b.StartTimer()
				if _, err := s.RecordFailure(ctx, f); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				reportPages += written() - w
				b.StartTimer()
			}
			b.ReportMetric(float64(claimPages)/float64(b.N), "claim-pages/op")
			b.ReportMetric(float64(reportPages)/float64(b.N), "report-pages/op")
		})
	}
}
