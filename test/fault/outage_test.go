package fault_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
)

// outageLoad keeps leases longer than the outage, so that the workers'
// reports of tasks they held when Redis died are acknowledged after it
// came back (the report wins over the reaper while the lease holds).
var outageLoad = loadConfig{
	producers: 2, interval: 20 * time.Millisecond,
	workers: 1, maxInFlight: 16, lease: 15 * time.Second, work: 20 * time.Millisecond,
	cancelEvery: 17,
}

// vitals are a replica's resource figures from its /metrics.
type vitals struct {
	goroutines float64
	rssMB      float64
}

func (p *proc) vitals(t *testing.T) vitals {
	t.Helper()
	return vitals{
		goroutines: p.metric(t, "go_goroutines"),
		rssMB:      p.metric(t, "process_resident_memory_bytes") / (1 << 20),
	}
}

// TestRedisOutage: Redis (appendfsync always) is killed under load and
// started again 3 seconds later. During the outage every report is
// answered UNAVAILABLE, never OK; health goes NOT_SERVING and comes back
// by itself; the replicas neither spin (CPU time and log lines are
// measured) nor pile up goroutines or memory; dispatch resumes without any
// worker reconnecting; and no acknowledged report is lost.
func TestRedisOutage(t *testing.T) {
	const outage = 4 * time.Second
	srv := testredis.Start(t, testredis.AOF("always"))
	st := openStore(t, srv)
	procs := startReplicas(t, []string{"A", "B"}, srv.URL(), nil)
	l := startLoad(t, withPrefix(outageLoad, "outage"), procs)

	time.Sleep(time.Second) // steady load
	before := map[string]vitals{}
	for _, p := range procs {
		before[p.name] = p.vitals(t)
	}
	srv.Kill()
	killed := time.Now()
	// Measure the replicas from just after the kill to the end of the
	// outage, while the producers and workers keep retrying.
	time.Sleep(200 * time.Millisecond)
	from := time.Now()
	cpuFrom := map[string]time.Duration{}
	for _, p := range procs {
		cpuFrom[p.name] = p.cpuTime(t)
	}
	for _, p := range procs {
		down := p.waitHealth(t, healthpb.HealthCheckResponse_NOT_SERVING, outage)
		t.Logf("%s: health NOT_SERVING %v after the kill", p.name, down.Sub(killed).Round(time.Millisecond))
	}
	time.Sleep(time.Until(killed.Add(outage)))
	to := time.Now()
	during := map[string]vitals{}
	for _, p := range procs {
		during[p.name] = p.vitals(t)
		cpu := p.cpuTime(t) - cpuFrom[p.name]
		window := to.Sub(from)
		share := cpu.Seconds() / window.Seconds()
		// Each refused call logs its own lines (the store error and the
		// call's end): those follow the clients' retry rate. What retryd
		// logs by itself (the dispatcher's, reaper's and readiness loops'
		// retries, go-redis's dial errors) must stay a trickle.
		lines := p.logs.count(from, to, "")
		perCall := p.logs.count(from, to, "msg=\"store unavailable\"") + p.logs.count(from, to, "msg=\"finished call\"")
		own := float64(lines-perCall) / window.Seconds()
		t.Logf("%s during the outage: %.0f%% of a core (%v CPU in %v); log lines/s: %.1f of its own (%.1f from go-redis), %.1f for refused calls; goroutines %.0f → %.0f, RSS %.1f → %.1f MB",
			p.name, 100*share, cpu, window.Round(time.Millisecond), own, float64(p.logs.count(from, to, "component=go-redis"))/window.Seconds(),
			float64(perCall)/window.Seconds(), before[p.name].goroutines, during[p.name].goroutines, before[p.name].rssMB, during[p.name].rssMB)
		require.Less(t, share, 0.25, "%s spins while Redis is down", p.name)
		require.Less(t, own, 25.0, "%s floods its log while Redis is down", p.name)
		require.Less(t, during[p.name].goroutines, before[p.name].goroutines+100, "%s piles up goroutines", p.name)
		require.Less(t, during[p.name].rssMB, before[p.name].rssMB+64, "%s piles up memory", p.name)
	}

	// Redis answers again somewhere inside Restart (it returns once Redis
	// answers PING): the outage, for the check below, ends when it begins.
	restarting := time.Now()
	srv.Restart()
	restarted := time.Now()
	for _, p := range procs {
		up := p.waitHealth(t, healthpb.HealthCheckResponse_SERVING, 10*time.Second)
		t.Logf("%s: health SERVING %v after the restart", p.name, up.Sub(restarted).Round(time.Millisecond))
	}
	time.Sleep(time.Second) // load after the outage
	l.settle(t, st, 30*time.Second)
	l.requireClean(t, st)
	checkConservation(t, st, l.ledger)

	// Every report sent and answered while Redis was down was refused.
	l.ledger.mu.Lock()
	refused, deliveredAfter := 0, map[string]bool{}
	for _, r := range l.ledger.rpcs {
		if r.start.After(killed) && r.end.Before(restarting) {
			require.Equal(t, codes.Unavailable, r.code, "a report answered %v during the outage (via %s, sent %v after the kill, answered %v before the restart)",
				r.code, r.via, r.start.Sub(killed), restarting.Sub(r.end))
			refused++
		}
	}
	for _, ds := range l.ledger.deliveries {
		for _, d := range ds {
			if d.at.After(restarted) {
				deliveredAfter[d.via] = true
			}
		}
	}
	l.ledger.mu.Unlock()
	require.Positive(t, refused, "reports were sent during the outage")
	for _, p := range procs {
		require.True(t, deliveredAfter[p.name], "%s dispatched again after Redis came back", p.name)
		after := p.vitals(t)
		require.Less(t, after.goroutines, before[p.name].goroutines+50, "%s kept goroutines from the outage", p.name)
	}
	t.Logf("%d reports answered UNAVAILABLE during the %v outage; every acknowledged report survived the kill (appendfsync always)", refused, outage)
}

// TestReadOnlyPrimaryBacksOff: after a failover the old primary, still in
// retryd's URL, becomes a replica: reads work (the retries are due), every
// write fails with READONLY. Reports get UNAVAILABLE, and the dispatcher
// waits between failed claims instead of spinning on the due retries
// (asynq's "keeps failing with READONLY" case). When the node is writable
// again, dispatch resumes by itself.
func TestReadOnlyPrimaryBacksOff(t *testing.T) {
	x := testredis.Start(t, testredis.TCP(), testredis.Config(noSyncDelay))
	y := testredis.Start(t, testredis.TCP(), testredis.Config(noSyncDelay, "replicaof "+strings.Replace(x.Addr(), ":", " ", 1)))
	waitRole(t, y, "role:slave", "master_link_status:up")
	st := openStore(t, x)
	p := startProc(t, "A", nil, replicaArgs(x.URL())...)
	ids := seedDue(t, st, "ro", 20, time.Now())

	// The failover: y is promoted, x follows it.
	ctx := context.Background()
	require.NoError(t, y.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err())
	yHost, yPort, _ := strings.Cut(y.Addr(), ":")
	require.NoError(t, x.Client().Do(ctx, "REPLICAOF", yHost, yPort).Err())
	waitRole(t, x, "role:slave", "master_link_status:up")

	_, err := p.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: "new", Phase: "extraction", ErrorType: "Timeout"})
	require.Equal(t, codes.Unavailable, status.Code(err), "a report to a read-only Redis: %v", err)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := p.retry.Dispatch(sctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w", MaxInFlight: 100})
	require.NoError(t, err)
	tasks := make(chan *retrydv1.Task, 100)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				close(tasks)
				return
			}
			if task := msg.GetTask(); task != nil {
				tasks <- task
			}
		}
	}()
	const window = 2 * time.Second
	from, cpu0 := time.Now(), p.cpuTime(t)
	time.Sleep(window)
	to, cpu := time.Now(), p.cpuTime(t)-cpu0
	claims := p.logs.count(from, to, "dispatcher: claim failed")
	t.Logf("read-only Redis for %v: %d failed claims, %v CPU (%.0f%% of a core)", window, claims, cpu, 100*cpu.Seconds()/window.Seconds())
	require.Positive(t, claims, "the dispatcher tried")
	require.LessOrEqual(t, claims, 20, "the dispatcher backs off between failed claims")
	require.Less(t, cpu.Seconds()/window.Seconds(), 0.25, "retryd spins on a read-only Redis")
	require.Empty(t, tasks, "nothing was dispatched from a read-only Redis")

	// x is writable again: the due retries go out without a reconnect.
	require.NoError(t, x.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err())
	got := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(got) < len(ids) {
		select {
		case task, ok := <-tasks:
			require.True(t, ok, "the stream ended")
			got[task.GetJobId()] = true
			_, err := p.retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
				JobId: task.GetJobId(), Phase: task.GetPhase(), RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
			})
			require.NoError(t, err)
		case <-deadline:
			t.Fatalf("only %d of %d retries dispatched after the node became writable", len(got), len(ids))
		}
	}
}

// noSyncDelay makes a primary start a full resync at once, instead of
// waiting 5 s for more replicas to join the diskless transfer.
const noSyncDelay = "repl-diskless-sync-delay 0"

// waitRole waits until srv's INFO replication shows every one of want.
func waitRole(t *testing.T, srv *testredis.Server, want ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		info, err := srv.Client().Info(context.Background(), "replication").Result()
		if err != nil {
			return false
		}
		for _, w := range want {
			if !strings.Contains(info, w) {
				return false
			}
		}
		return true
	}, 15*time.Second, 10*time.Millisecond, "%s never showed %v", srv.Addr(), want)
}

// TestStrictDurabilityThroughRetryd: with --redis-durability strict a
// report is acknowledged only once the replica has it; with the replica
// down, reports are answered UNAVAILABLE (after the wait timeout), and the
// same report is acknowledged once the replica is back.
func TestStrictDurabilityThroughRetryd(t *testing.T) {
	primary := testredis.Start(t, testredis.TCP(), testredis.Config(noSyncDelay))
	replica := testredis.Start(t, testredis.TCP(), testredis.Config("replicaof "+strings.Replace(primary.Addr(), ":", " ", 1)))
	waitRole(t, primary, "connected_slaves:1", "state=online")
	// A wait long enough for a loaded machine while the replica is up; the
	// report while it is down takes all of it.
	p := startProc(t, "A", nil, replicaArgs(primary.URL(), "--redis-durability", "strict", "--redis-wait-timeout", "2s")...)
	p.waitLog(t, "msg=redis", "durability=strict", "replicas=1")
	ctx := context.Background()
	report := func(job string) error {
		_, err := p.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: job, Phase: "extraction", ErrorType: "Timeout"})
		return err
	}
	for i := range 10 {
		job := fmt.Sprintf("strict-%d", i)
		require.NoError(t, report(job))
		require.Equal(t, int64(1), replica.Client().Exists(ctx, "{retryd}:j:"+job).Val(), "%s acknowledged before the replica had it", job)
	}

	replica.Kill()
	began := time.Now()
	err := report("while-replica-down")
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.GreaterOrEqual(t, time.Since(began), 2*time.Second)
	p.waitLog(t, "0 of 1 replicas confirmed the change within 2s")

	replica.Restart()
	waitRole(t, primary, "connected_slaves:1", "state=online")
	require.NoError(t, report("while-replica-down"), "the repeated report is acknowledged once the replica has it")
	require.Equal(t, int64(1), replica.Client().Exists(ctx, "{retryd}:j:while-replica-down").Val())
}
