package fault_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
)

// TestReplicasRaceForOneBurst: three replicas on one Redis, with Dispatch
// streams on every one of them, and 5,000 retries due at the same
// microsecond. Every retry is delivered exactly once (the leases are long:
// none expires), none is lost, every report is acknowledged, and the claim
// races between the replicas never surface as an error, in an RPC or in a
// replica's log.
func TestReplicasRaceForOneBurst(t *testing.T) {
	const (
		jobs          = 5000
		streamsPerRep = 2
		maxInFlight   = 200
	)
	srv := testredis.Start(t)
	st := openStore(t, srv)
	procs := startReplicas(t, []string{"A", "B", "C"}, srv.URL(), nil)

	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu        sync.Mutex
		delivered = map[string]int{}
		byReplica = map[string]int{}
		last      time.Time
		errs      []string
		all       = make(chan struct{})
		wg        sync.WaitGroup
	)
	for _, p := range procs {
		for s := range streamsPerRep {
			stream, err := p.retry.Dispatch(ctx, &retrydv1.DispatchRequest{
				Phases: []string{"extraction"}, WorkerId: fmt.Sprintf("%s-%d", p.name, s),
				MaxInFlight: maxInFlight, LeaseDuration: durationpb.New(time.Minute),
			})
			require.NoError(t, err)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					msg, err := stream.Recv()
					if err != nil {
						if ctx.Err() == nil {
							mu.Lock()
							errs = append(errs, fmt.Sprintf("%s stream: %v", p.name, err))
							mu.Unlock()
						}
						return
					}
					task := msg.GetTask()
					if task == nil {
						continue
					}
					now := time.Now()
					l.addDelivery(task.GetJobId(), delivery{rc: task.GetRetryCount(), leaseID: task.GetLeaseId(), via: p.name, at: now})
					mu.Lock()
					delivered[task.GetJobId()]++
					byReplica[p.name]++
					last = now
					if len(delivered) == jobs {
						close(all)
					}
					mu.Unlock()
					// Workers run their tasks concurrently (up to
					// max_in_flight each), as real ones do.
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, err := p.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
							JobId: task.GetJobId(), Phase: task.GetPhase(), RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
						})
						if err != nil {
							mu.Lock()
							errs = append(errs, fmt.Sprintf("ReportSuccess %s via %s: %v", task.GetJobId(), p.name, err))
							mu.Unlock()
							return
						}
						l.addAck(ack{job: task.GetJobId(), rc: task.GetRetryCount(), success: true, leaseID: task.GetLeaseId(), via: p.name, at: time.Now()})
					}()
				}
			}()
		}
	}

	// The streams are open (and idle) before the first job is seeded, so
	// that a slow seeding cannot make them miss the burst; on a host slow
	// enough for seeding to outlast the margin, jobs fall due while the
	// rest are seeded: the race is milder, the checks below the same.
	began := time.Now()
	due := began.Add(3 * time.Second)
	ids := seedDue(t, st, "burst", jobs, due)
	t.Logf("seeded %d jobs in %v", jobs, time.Since(began).Round(time.Millisecond))
	if time.Now().After(due) {
		t.Logf("seeding ended %v after the due time: the burst was spread over it", time.Since(due).Round(time.Millisecond))
	}
	for _, id := range ids {
		l.addAck(ack{job: id, decision: retrydv1.Decision_DECISION_RETRY, via: "seed"})
	}

	select {
	case <-all:
	case <-time.After(time.Until(due) + 60*time.Second):
		mu.Lock()
		n := len(delivered)
		mu.Unlock()
		t.Fatalf("only %d of %d retries delivered", n, jobs)
	}
	// Let the last reports land, then check that nothing more arrives.
	require.Eventually(t, func() bool {
		var total float64
		for _, p := range procs {
			total += p.metric(t, `retryd_successes_total{phase="extraction",retry="true"}`)
		}
		return total == jobs
	}, 30*time.Second, 20*time.Millisecond, "every report acknowledged")
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, errs, "no RPC failed")
	require.Len(t, delivered, jobs, "every retry delivered")
	for id, n := range delivered {
		require.Equal(t, 1, n, "job %s delivered %d times", id, n)
	}
	var dispatched float64
	for _, p := range procs {
		require.Positive(t, byReplica[p.name], "replica %s took part in the race", p.name)
		dispatched += p.metric(t, `retryd_dispatched_total{phase="extraction"}`)
		require.Empty(t, p.problems(), "replica %s logged a problem", p.name)
	}
	require.Equal(t, float64(jobs), dispatched)
	names := make([]string, 0, len(byReplica))
	for n, c := range byReplica {
		names = append(names, fmt.Sprintf("%s=%d", n, c))
	}
	sort.Strings(names)
	t.Logf("%d retries due at one instant: all delivered once within %v of their due time, by replica: %s",
		jobs, last.Sub(due).Round(time.Millisecond), strings.Join(names, " "))

	checked := time.Now()
	c := checkConservation(t, st, l)
	t.Logf("conservation check took %v", time.Since(checked).Round(time.Millisecond))
	require.Equal(t, census{completed: jobs}, c)
}
