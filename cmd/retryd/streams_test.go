package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/boltstore"
	"github.com/retryd/retryd/store/redisstore"
)

// blackhole is a TCP proxy to target that can stop forwarding without
// closing anything: the peers see a silent link, as with a crashed host or
// a dropped NAT entry (no FIN, no RST).
type blackhole struct {
	lis    net.Listener
	target string
	silent atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &blackhole{lis: lis, target: target}
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(func() {
		lis.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *blackhole) addr() string { return b.lis.Addr().String() }

func (b *blackhole) accept() {
	defer b.wg.Done()
	for {
		in, err := b.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", b.target)
		if err != nil {
			in.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, in, out)
		b.mu.Unlock()
		b.wg.Add(2)
		go b.pipe(in, out)
		go b.pipe(out, in)
	}
}

// pipe copies src to dst until either closes; while silent, it keeps
// reading (so that nothing closes or resets) and drops what it reads.
func (b *blackhole) pipe(src, dst net.Conn) {
	defer b.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if b.silent.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// metricSum sums the /metrics samples of name whose labels contain every
// one of labels.
func metricSum(t *testing.T, addr, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sum := 0.0
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		require.NoError(t, err, line)
		sum += v
	}
	require.NoError(t, sc.Err())
	return sum
}

// TestDeadPeerIsNoticed: a worker's connection goes silent (a blackhole
// proxy stops forwarding and closes nothing). The server ends the worker's
// Dispatch stream through keepalive (--keepalive-time + --keepalive-timeout),
// so that it takes no new task: work reported afterwards goes to the live
// worker at once; the tasks the dead worker held come back after their
// lease as LeaseExpired attempts; and the client notices too, through its
// idle timeout on the heartbeats. Every job ends completed exactly once.
func TestDeadPeerIsNoticed(t *testing.T) {
	t.Parallel()
	const (
		keepalive   = time.Second
		heartbeat   = 200 * time.Millisecond
		idleTimeout = 5 * heartbeat // the client-side setting README.md recommends
		lease       = 3 * time.Second
	)
	maddr := freeAddr(t)
	p := start(t, nil, "--data-dir", t.TempDir(), "--metrics-listen", maddr, "--retry-delays", "50ms", "--jitter", "0",
		"--keepalive-time", keepalive.String(), "--keepalive-timeout", keepalive.String(),
		"--heartbeat-interval", heartbeat.String(), "--lease-duration", lease.String())
	retry, admin := clients(t, p.addr)
	ctx := context.Background()
	report := func(id string) {
		_, err := retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: id, Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)
	}

	// The doomed worker connects through the proxy, takes five tasks (it has
	// room for ten) and never reports them. It cancels its stream when
	// nothing (no task, no heartbeat) arrived for idleTimeout.
	proxy := newBlackhole(t, p.addr)
	conn, err := grpc.NewClient(proxy.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	dctx, cancelDoomed := context.WithCancel(ctx)
	defer cancelDoomed()
	doomed, err := retrydv1.NewRetryServiceClient(conn).Dispatch(dctx, &retrydv1.DispatchRequest{
		Phases: []string{"extraction"}, WorkerId: "doomed", MaxInFlight: 10,
	})
	require.NoError(t, err)
	var held []string
	for i := range 5 {
		report(fmt.Sprintf("held-%d", i))
	}
	for len(held) < 5 {
		msg, err := doomed.Recv()
		require.NoError(t, err)
		if task := msg.GetTask(); task != nil {
			held = append(held, task.GetJobId())
		}
	}
	clientNoticed := make(chan time.Duration, 1)
	silentSince := make(chan time.Time, 1)
	go func() {
		last := time.Now()
		msgs := make(chan error)
		go func() {
			for {
				_, err := doomed.Recv()
				msgs <- err
				if err != nil {
					return
				}
			}
		}()
		since := <-silentSince
		for {
			select {
			case err := <-msgs:
				if err != nil {
					return
				}
				last = time.Now()
			case <-time.After(time.Until(last.Add(idleTimeout))):
				clientNoticed <- time.Since(since)
				cancelDoomed()
				<-msgs
				return
			}
		}
	}()

	began := time.Now()
	proxy.silent.Store(true)
	silentSince <- began

	// The server notices: the stream's handler returns (the RPC is counted
	// as handled).
	handled := func() bool {
		return metricSum(t, maddr, "grpc_server_handled_total", `grpc_method="Dispatch"`) > 0
	}
	require.Eventually(t, handled, 30*time.Second, 20*time.Millisecond, "the server never ended the dead worker's stream")
	serverNoticed := time.Since(began)
	t.Logf("server ended the silent stream after %v (keepalive %v + %v)", serverNoticed, keepalive, keepalive)
	require.Less(t, serverNoticed, 2*keepalive+keepalive+2*time.Second)
	select {
	case d := <-clientNoticed:
		t.Logf("client noticed the silence after %v (idle timeout %v)", d, idleTimeout)
		require.Less(t, d, idleTimeout+2*time.Second)
	case <-time.After(10 * time.Second):
		t.Fatal("the client never noticed the silent stream")
	}

	// A live worker: new work reaches it at once (the dead stream takes
	// nothing more), and the held tasks come back after their lease.
	live, err := retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "live", MaxInFlight: 20})
	require.NoError(t, err)
	for i := range 3 {
		report(fmt.Sprintf("new-%d", i))
	}
	got := map[string]uint32{}
	deadline := time.Now().Add(lease + 10*time.Second)
	for len(got) < 8 {
		require.True(t, time.Now().Before(deadline), "only %d of 8 jobs came back: %v", len(got), got)
		msg, err := live.Recv()
		require.NoError(t, err)
		task := msg.GetTask()
		if task == nil {
			continue
		}
		_, dup := got[task.GetJobId()]
		require.False(t, dup, "job %s delivered twice", task.GetJobId())
		got[task.GetJobId()] = task.GetRetryCount()
		_, err = retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
			JobId: task.GetJobId(), Phase: "extraction", RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
		})
		require.NoError(t, err)
	}
	for id, rc := range got {
		if strings.HasPrefix(id, "new-") {
			require.Equal(t, uint32(1), rc, "job %s: new work went straight to the live worker", id)
			continue
		}
		require.Equal(t, uint32(2), rc, "job %s: the held attempt expired and was retried", id)
		job, err := admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: id})
		require.NoError(t, err)
		a := job.GetJob().GetAttempts()[1]
		require.Equal(t, "LeaseExpired", a.GetErrorType())
		require.Equal(t, "doomed", a.GetWorkerId())
		require.Equal(t, retrydv1.JobState_JOB_STATE_COMPLETED, job.GetJob().GetState())
	}
}

// stuckConn opens an HTTP/2 connection that completes the handshake and
// never reads again: it answers no ping, as an idle grpc-python channel
// does between the polls of its backup poller.
func stuckConn(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	require.NoError(t, http2.NewFramer(c, c).WriteSettings())
}

// openStore opens the store a stopped retryd left, to read its state.
func openStore(t *testing.T, kind, dir, redisURL string) store.Store {
	t.Helper()
	var (
		st  store.Store
		err error
	)
	if kind == "redis" {
		st, err = redisstore.Open(context.Background(), redisURL, redisstore.Options{})
	} else {
		st, err = boltstore.Open(dir+"/retryd.db", boltstore.Options{})
	}
	require.NoError(t, err)
	return st
}

// TestGracefulShutdownFiftyStreams: SIGTERM with 50 Dispatch streams open —
// 40 whose workers read (and hold some tasks unreported), 10 whose workers
// never read (their flow-control windows are full, so tasks claimed for them
// wait unsent) — and a connection that answers no ping. retryd exits 0 well
// within its grace period, and nothing is lost: every job is completed
// (acknowledged), leased (sent and not reported) or scheduled; the tasks
// claimed for the stuck streams but not sent went back to the schedule, no
// attempt was counted for them; and after a restart every job reaches a
// worker exactly once, the held ones after their lease.
func TestGracefulShutdownFiftyStreams(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"embedded", "redis"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			dir, redisURL := t.TempDir(), ""
			args := []string{"--data-dir", dir, "--retry-delays", "10ms", "--jitter", "0", "--shutdown-grace", "10s"}
			if kind == "redis" {
				redisURL = testredis.Start(t).URL()
				args = append(args, "--redis-url", redisURL)
			}
			shutdownFiftyStreams(t, kind, dir, redisURL, args)
		})
	}
}

func shutdownFiftyStreams(t *testing.T, kind, dir, redisURL string, args []string) {
	const (
		jobs      = 150
		readers   = 40
		stuck     = 10
		readLease = 2 * time.Second
		// The stuck streams' lease is long enough that the server does not
		// end them itself (it does after half a blocked task's lease)
		// before the SIGTERM.
		stuckLease = 30 * time.Second
	)
	ctx := context.Background()
	p := start(t, nil, args...)
	retry, admin := clients(t, p.addr)
	// 160 KB payloads: one task fills a stuck stream's 64 KiB window and
	// the server's 64 KiB write quota, so the next Send to it blocks.
	payload, err := structpb.NewStruct(map[string]any{"blob": strings.Repeat("p", 160<<10)})
	require.NoError(t, err)
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = fmt.Sprintf("job-%03d", i)
		_, err := retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: ids[i], Phase: "extraction", ErrorType: "Timeout", Payload: payload})
		require.NoError(t, err)
	}

	// The stuck workers: one connection with a fixed 64 KiB window, ten
	// streams never read, three tasks in flight each.
	sconn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { sconn.Close() })
	sctx, cancelStuck := context.WithCancel(ctx)
	defer cancelStuck()
	for i := range stuck {
		_, err := retrydv1.NewRetryServiceClient(sconn).Dispatch(sctx, &retrydv1.DispatchRequest{
			Phases: []string{"extraction"}, WorkerId: fmt.Sprintf("stuck-%d", i), MaxInFlight: 3,
			LeaseDuration: durationpb.New(stuckLease),
		})
		require.NoError(t, err)
	}

	// The reading workers, ten streams per connection: each acknowledges the
	// even jobs and holds the odd ones (one in flight per stream).
	var (
		mu     sync.Mutex
		acked  = map[string]bool{}
		inHand = map[string]bool{}
		ended  = make(chan error, readers)
	)
	rctx, cancelReaders := context.WithCancel(ctx)
	defer cancelReaders()
	for c := range readers / 10 {
		conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		client := retrydv1.NewRetryServiceClient(conn)
		for s := range 10 {
			stream, err := client.Dispatch(rctx, &retrydv1.DispatchRequest{
				Phases: []string{"extraction"}, WorkerId: fmt.Sprintf("reader-%d-%d", c, s), MaxInFlight: 1,
				LeaseDuration: durationpb.New(readLease),
			})
			require.NoError(t, err)
			go func() {
				for {
					msg, err := stream.Recv()
					if err != nil {
						ended <- err
						return
					}
					task := msg.GetTask()
					if task == nil {
						continue
					}
					var n int
					_, _ = fmt.Sscanf(task.GetJobId(), "job-%d", &n)
					if n%2 == 1 {
						mu.Lock()
						inHand[task.GetJobId()] = true
						mu.Unlock()
						continue
					}
					_, err = client.ReportSuccess(rctx, &retrydv1.ReportSuccessRequest{
						JobId: task.GetJobId(), Phase: "extraction", RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
					})
					if err == nil {
						mu.Lock()
						acked[task.GetJobId()] = true
						mu.Unlock()
					}
				}
			}()
		}
	}
	// Settled: every reader holds one task and 70 jobs are leased, so the
	// stuck streams have their three each. (Readers hold only odd jobs;
	// there are enough of them.)
	count := func(req *retrydv1.ListJobsRequest) int {
		req.PageSize = 1000
		list, err := admin.ListJobs(ctx, req)
		require.NoError(t, err)
		return len(list.GetJobs())
	}
	inFlight := func() int {
		return jobs - count(&retrydv1.ListJobsRequest{State: retrydv1.JobState_JOB_STATE_COMPLETED}) - count(&retrydv1.ListJobsRequest{InBackoff: true})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		h := len(inHand)
		mu.Unlock()
		return h == readers && inFlight() == readers+3*stuck
	}, 30*time.Second, 50*time.Millisecond, "the streams never settled: %d leased", inFlight())
	stuckConn(t, p.addr)

	began := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		require.NoError(t, err, "retryd should exit 0 on SIGTERM\n%s", p.logs)
		p.done <- err
	case <-time.After(15 * time.Second):
		t.Fatalf("retryd did not stop within 15s\n%s", p.logs)
	}
	took := time.Since(began)
	t.Logf("%s: SIGTERM to exit with 50 streams open: %v", kind, took)
	require.Less(t, took, 3*time.Second, "the grace period is 10s; nothing should make retryd wait for it")
	for range readers {
		err := <-ended
		require.Equal(t, codes.Unavailable, status.Code(err), "a reading worker's stream ends with UNAVAILABLE: %v", err)
	}
	cancelReaders()

	// Conservation, read from the store retryd left.
	st := openStore(t, kind, dir, redisURL)
	mu.Lock()
	var completed, leased, scheduled int
	stuckLeased := map[string]int{}
	for _, id := range ids {
		j, err := st.GetJob(ctx, id)
		require.NoError(t, err)
		switch {
		case j.State == store.StateCompleted:
			completed++
			require.True(t, acked[id], "job %s completed without an acknowledged report", id)
		case j.State == store.StateProcessing && j.LeaseID != "":
			leased++
			require.False(t, acked[id], "job %s", id)
			if inHand[id] {
				require.True(t, strings.HasPrefix(j.WorkerID, "reader-"), "job %s held by %s", id, j.WorkerID)
			} else {
				require.True(t, strings.HasPrefix(j.WorkerID, "stuck-"), "job %s leased to %s, which never got it", id, j.WorkerID)
				stuckLeased[j.WorkerID]++
			}
			require.Len(t, j.Attempts, 1, "job %s: no attempt counted for the shutdown", id)
		case j.State == store.StateProcessing && j.InBackoff():
			scheduled++
			require.False(t, acked[id] || inHand[id], "job %s was handed out and is scheduled again", id)
			require.Len(t, j.Attempts, 1, "job %s: no attempt counted for the shutdown", id)
		default:
			t.Fatalf("job %s is in no expected state: %+v", id, j)
		}
	}
	require.Equal(t, len(acked), completed)
	require.Equal(t, jobs, completed+leased+scheduled)
	for w, n := range stuckLeased {
		require.Equal(t, 1, n, "%s: only its first task was sent; the two claimed behind it went back", w)
	}
	t.Logf("%s: %d acknowledged, %d in flight (%d held by readers, %d sent to stuck streams), %d scheduled (%d of them taken back from the stuck streams)",
		kind, completed, leased, len(inHand), leased-len(inHand), scheduled, 3*stuck-len(stuckLeased))
	held := make(map[string]bool, len(inHand))
	for id := range inHand {
		held[id] = true
	}
	mu.Unlock()
	require.NoError(t, st.Close())
	cancelStuck()

	// Restarted, retryd hands out every job not completed exactly once:
	// scheduled ones at once, held ones after their lease (the stuck
	// streams' only after theirs, 30 s: not waited for here).
	q := start(t, nil, args...)
	retry, admin = clients(t, q.addr)
	drain, err := retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "drain", MaxInFlight: jobs})
	require.NoError(t, err)
	want := scheduled + len(held)
	got := map[string]uint32{}
	deadline := time.Now().Add(readLease + 20*time.Second)
	for len(got) < want {
		require.True(t, time.Now().Before(deadline), "only %d of %d jobs came back", len(got), want)
		msg, err := drain.Recv()
		require.NoError(t, err)
		task := msg.GetTask()
		if task == nil {
			continue
		}
		_, dup := got[task.GetJobId()]
		require.False(t, dup, "job %s delivered twice", task.GetJobId())
		got[task.GetJobId()] = task.GetRetryCount()
		_, err = retry.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{
			JobId: task.GetJobId(), Phase: "extraction", RetryCount: task.GetRetryCount(), LeaseId: task.GetLeaseId(),
		})
		require.NoError(t, err)
	}
	for id, rc := range got {
		if held[id] {
			require.Equal(t, uint32(2), rc, "job %s: its held attempt expired (LeaseExpired) and was retried", id)
		} else {
			require.Equal(t, uint32(1), rc, "job %s: it went back unsent; no attempt was counted", id)
		}
	}
	list, err := admin.ListJobs(ctx, &retrydv1.ListJobsRequest{State: retrydv1.JobState_JOB_STATE_COMPLETED, PageSize: 1000})
	require.NoError(t, err)
	require.Len(t, list.GetJobs(), completed+want)
}
