package fault_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/redisstore"
)

// crashLoad is the steady load of the crash tests: reports and dispatches
// flowing through three replicas, with short leases so that whatever a
// dead replica held comes back within seconds.
var crashLoad = loadConfig{
	producers: 2, interval: 20 * time.Millisecond,
	workers: 1, maxInFlight: 16, lease: time.Second, work: 200 * time.Millisecond,
	cancelEvery: 17,
}

// crashSet starts replicas A, B and C on srv; A runs with envA (its fault).
func crashSet(t *testing.T, srv *testredis.Server, envA []string) []*proc {
	t.Helper()
	a := launch(t, "A", envA, replicaArgs(srv.URL())...)
	rest := startReplicas(t, []string{"B", "C"}, srv.URL(), nil)
	a.waitHealth(t, healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	return []*proc{a, rest[0], rest[1]}
}

// leasesOf returns the leases the replica named handed out (the workers'
// ids end in "@<replica>"), read from Redis.
func leasesOf(t *testing.T, st *redisstore.Store, replica string) []store.Lease {
	t.Helper()
	all, err := st.ExpiredLeases(context.Background(), time.Now().Add(1000*time.Hour), 1_000_000)
	require.NoError(t, err)
	var out []store.Lease
	for _, l := range all {
		if strings.HasSuffix(l.WorkerID, "@"+replica) {
			out = append(out, l)
		}
	}
	return out
}

// comeBack checks what became of the leases a dead replica held: each one
// was either reported by its worker through another replica, or expired
// and was recorded as a LeaseExpired attempt, whose retry (if the policy
// gave one) was delivered by another replica. It returns how many took
// each way.
func comeBack(t *testing.T, st *redisstore.Store, l *ledger, dead string, leases []store.Lease, died time.Time) (reported, expired int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, le := range leases {
		j, err := st.GetJob(context.Background(), le.JobID)
		require.NoError(t, err)
		require.Contains(t, []store.JobState{store.StateCompleted, store.StateFailed, store.StateCanceled}, j.State,
			"job %s, leased by dead %s, never finished", le.JobID, dead)
		viaOther := false
		for _, a := range l.acked[le.JobID] {
			if a.leaseID == le.LeaseID && a.via != dead {
				viaOther = true
			}
		}
		if viaOther {
			reported++
			continue
		}
		if l.canceled[le.JobID] {
			continue
		}
		var lapsed bool
		for _, a := range j.Attempts {
			if a.RetryCount == le.RetryCount && a.ErrorType == "LeaseExpired" {
				lapsed = true
				require.Equal(t, le.WorkerID, a.WorkerID)
			}
		}
		require.True(t, lapsed, "job %s: the lease %s of dead %s was neither reported nor reaped", le.JobID, le.LeaseID, dead)
		expired++
		if j.State == store.StateCompleted {
			// The retry after the expired lease ran on a live replica.
			var next bool
			for _, d := range l.deliveries[le.JobID] {
				if d.rc > le.RetryCount && d.via != dead && d.at.After(died) {
					next = true
				}
			}
			require.True(t, next, "job %s: its retry after the lease expired did not come through another replica", le.JobID)
		}
	}
	return reported, expired
}

// TestKill9UnderLoad: a replica is killed with SIGKILL while reports and
// dispatches flow through all three. Every acknowledged report is in
// Redis, and every task the dead replica had leased comes back through
// another replica (its worker reports it there, or the lease expires and
// the retry is dispatched elsewhere).
func TestKill9UnderLoad(t *testing.T) {
	srv := testredis.Start(t)
	st := openStore(t, srv)
	procs := crashSet(t, srv, nil)
	l := startLoad(t, withPrefix(crashLoad, "kill"), procs)

	time.Sleep(time.Second) // steady load
	procs[0].kill(t)
	died := time.Now()
	leases := leasesOf(t, st, "A")
	time.Sleep(time.Second) // the load goes on without A

	l.settle(t, st, 20*time.Second)
	l.requireClean(t, st)
	c := checkConservation(t, st, l.ledger)
	require.Positive(t, c.completed)
	reported, expired := comeBack(t, st, l.ledger, "A", leases, died)
	t.Logf("A held %d leases when it died: %d reported through B or C, %d expired and retried", len(leases), reported, expired)
}

// TestCrashAfterClaim: replica A dies (fault hook) right after a claim
// returned tasks and before it handed them to its stream: the tasks are
// leased in Redis and no worker has them. They come back through B or C
// once the lease expires.
func TestCrashAfterClaim(t *testing.T) {
	srv := testredis.Start(t)
	st := openStore(t, srv)
	procs := crashSet(t, srv, []string{"RETRYD_FAULT=crash-after-claim@25"})
	l := startLoad(t, withPrefix(crashLoad, "claim"), procs)

	procs[0].waitExit(t, 30*time.Second)
	died := time.Now()
	require.Contains(t, procs[0].logs.String(), "fault: crashing at crash-after-claim")
	leases := leasesOf(t, st, "A")
	// The claim's tasks were never delivered: no worker saw those leases.
	l.ledger.mu.Lock()
	var unsent []store.Lease
	for _, le := range leases {
		seen := false
		for _, d := range l.ledger.deliveries[le.JobID] {
			if d.leaseID == le.LeaseID {
				seen = true
			}
		}
		if !seen {
			unsent = append(unsent, le)
		}
	}
	l.ledger.mu.Unlock()
	require.NotEmpty(t, unsent, "the crash left claimed, unsent tasks")
	time.Sleep(500 * time.Millisecond)

	l.settle(t, st, 20*time.Second)
	l.requireClean(t, st)
	checkConservation(t, st, l.ledger)
	reported, expired := comeBack(t, st, l.ledger, "A", unsent, died)
	require.Zero(t, reported)
	require.Equal(t, len(unsent), expired)
	t.Logf("A crashed after a claim holding %d unsent tasks: all expired and came back through B or C", len(unsent))
}

// TestCrashAfterSend: replica A dies (fault hook) right after sending a
// task, before the worker reports it. The worker's report of that task,
// sent to A, fails; sent to B or C it is acknowledged: the report is the
// acknowledgement, and any replica takes it.
func TestCrashAfterSend(t *testing.T) {
	srv := testredis.Start(t)
	st := openStore(t, srv)
	procs := crashSet(t, srv, []string{"RETRYD_FAULT=crash-after-send@40"})
	l := startLoad(t, withPrefix(crashLoad, "send"), procs)

	procs[0].waitExit(t, 30*time.Second)
	died := time.Now()
	require.Contains(t, procs[0].logs.String(), "fault: crashing at crash-after-send")
	leases := leasesOf(t, st, "A")
	time.Sleep(500 * time.Millisecond)

	l.settle(t, st, 20*time.Second)
	l.requireClean(t, st)
	checkConservation(t, st, l.ledger)
	// The task A sent last reached its worker and was acknowledged by
	// another replica after A died.
	l.ledger.mu.Lock()
	rescued := 0
	for job, ds := range l.ledger.deliveries {
		for _, d := range ds {
			if d.via != "A" || d.at.After(died) {
				continue
			}
			for _, a := range l.ledger.acked[job] {
				if a.leaseID == d.leaseID && a.via != "A" && a.at.After(died) {
					rescued++
				}
			}
		}
	}
	l.ledger.mu.Unlock()
	require.Positive(t, rescued, "a task sent by A before it died was reported through B or C")
	reported, expired := comeBack(t, st, l.ledger, "A", leases, died)
	t.Logf("A crashed after a send: %d of its tasks were reported through B or C after it died; of the %d leases it held, %d were reported elsewhere and %d expired",
		rescued, len(leases), reported, expired)
}

// withPrefix gives a load its own job ids.
func withPrefix(c loadConfig, prefix string) loadConfig {
	c.prefix = prefix
	return c
}

// TestFaultSpecChecked: a fault build refuses a RETRYD_FAULT it does not
// understand instead of running without the crash the test asked for.
func TestFaultSpecChecked(t *testing.T) {
	for spec, want := range map[string]string{
		"crash-after-lunch":     "unknown fault point",
		"crash-after-claim@0":   "the count after @ must be a positive number",
		"crash-after-send@many": "the count after @ must be a positive number",
	} {
		p := launch(t, "A", []string{"RETRYD_FAULT=" + spec}, "--data-dir", t.TempDir())
		p.waitExit(t, 10*time.Second)
		require.Contains(t, p.logs.String(), want, spec)
	}
}
