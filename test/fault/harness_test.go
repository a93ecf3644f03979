package fault_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/redisstore"
)

// logLine is one line a process wrote, with the time it arrived.
type logLine struct {
	at   time.Time
	text string
}

// lineLog collects a process's output line by line, time-stamped, so that
// a test can count what was logged in a window (the log rate during an
// outage). It is safe for the process's writer and the test at once.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []logLine
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, logLine{at: now, text: string(l.partial[:i])})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// String is the whole output.
func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ln := range l.lines {
		b.WriteString(ln.text)
		b.WriteByte('\n')
	}
	b.Write(l.partial)
	return b.String()
}

// count returns how many lines arrived in [from, to) and contain substr.
func (l *lineLog) count(from, to time.Time, substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ln := range l.lines {
		if !ln.at.Before(from) && ln.at.Before(to) && strings.Contains(ln.text, substr) {
			n++
		}
	}
	return n
}

// matching returns the lines containing every one of substrs.
func (l *lineLog) matching(substrs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, ln := range l.lines {
		for _, s := range substrs {
			if !strings.Contains(ln.text, s) {
				continue next
			}
		}
		out = append(out, ln.text)
	}
	return out
}

// waitLog waits until a line containing every one of substrs has arrived:
// the process's output reaches the test through a pipe, a moment after the
// process wrote it.
func (p *proc) waitLog(t *testing.T, substrs ...string) {
	t.Helper()
	require.Eventually(t, func() bool { return len(p.logs.matching(substrs...)) > 0 },
		10*time.Second, 5*time.Millisecond, "retryd %s never logged a line with %q", p.name, substrs)
}

// proc is a running retryd replica and its clients.
type proc struct {
	name        string
	addr        string
	metricsAddr string
	cmd         *exec.Cmd
	logs        *lineLog
	done        chan struct{} // closed when the process has exited
	exitErr     error

	conn   *grpc.ClientConn
	retry  retrydv1.RetryServiceClient
	admin  retrydv1.AdminServiceClient
	health healthpb.HealthClient
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// launch starts the retryd binary with args and env (added to this
// process's environment) and returns at once.
func launch(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, addr: freeAddr(t), metricsAddr: freeAddr(t), logs: &lineLog{}, done: make(chan struct{})}
	cmd := exec.Command(retrydBin, append([]string{"--listen", p.addr, "--metrics-listen", p.metricsAddr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	// The replica dies with the test binary even if cleanups do not run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	p.cmd = cmd
	go func() {
		p.exitErr = cmd.Wait()
		close(p.done)
	}()
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	p.conn = conn
	p.retry = retrydv1.NewRetryServiceClient(conn)
	p.admin = retrydv1.NewAdminServiceClient(conn)
	p.health = healthpb.NewHealthClient(conn)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		conn.Close()
		if t.Failed() {
			t.Logf("retryd %s logs (last 60 lines):\n%s", name, tailLines(p.logs.String(), 60))
		}
	})
	return p
}

// startProc launches retryd and waits until its health says SERVING.
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := launch(t, name, env, args...)
	p.waitHealth(t, healthpb.HealthCheckResponse_SERVING, 20*time.Second)
	return p
}

// alive reports whether the process still runs.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
}

// waitExit waits for the process to exit by itself.
func (p *proc) waitExit(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("retryd %s did not exit within %v", p.name, within)
	}
}

// healthStatus asks the health service for the whole server.
func (p *proc) healthStatus() (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	h, err := p.health.Check(ctx, &healthpb.HealthCheckRequest{})
	return h.GetStatus(), err
}

// waitHealth polls health until it reports want, and returns when it did.
func (p *proc) waitHealth(t *testing.T, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := p.healthStatus()
		if err == nil && got == want {
			return time.Now()
		}
		if !p.alive() {
			t.Fatalf("retryd %s exited (%v) while waiting for health %v\n%s", p.name, p.exitErr, want, tailLines(p.logs.String(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("retryd %s health not %v within %v (last: %v, %v)", p.name, want, within, got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuTime is the CPU time (user + system) the process has used, from
// /proc/<pid>/stat.
func (p *proc) cpuTime(t *testing.T) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	require.NoError(t, err)
	// The command name (field 2) is in parentheses and may hold spaces.
	rest := string(raw[bytes.LastIndexByte(raw, ')')+2:])
	f := strings.Fields(rest)
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	require.NoError(t, err1)
	require.NoError(t, err2)
	const clockTicks = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// metrics scrapes /metrics and returns the samples whose line starts with
// name (with or without labels), keyed by the sample's name and labels.
func (p *proc) metrics(t *testing.T, name string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.metricsAddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		out[line[:i]] = v
	}
	require.NoError(t, sc.Err())
	return out
}

// metric returns one sample (name with its labels, exactly as exported).
func (p *proc) metric(t *testing.T, sample string) float64 {
	t.Helper()
	v, ok := p.metrics(t, sample)[sample]
	require.True(t, ok, "/metrics of %s has no %s", p.name, sample)
	return v
}

// problems returns the log lines at WARN or ERROR level, and go-redis's own
// complaints, with the exceptions allowed.
func (p *proc) problems(allowed ...string) []string {
	var out []string
	for _, line := range strings.Split(p.logs.String(), "\n") {
		bad := strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
			strings.HasPrefix(line, "redis: ") || strings.Contains(line, "component=go-redis") || strings.Contains(line, "panic")
		for _, a := range allowed {
			if strings.Contains(line, a) {
				bad = false
			}
		}
		if bad {
			out = append(out, line)
		}
	}
	return out
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// replicaArgs are the flags every replica of a test runs with: fast retry
// delays and no jitter, so that a whole retry cycle takes milliseconds.
func replicaArgs(redisURL string, extra ...string) []string {
	return append([]string{
		"--redis-url", redisURL,
		"--retry-delays", "50ms,100ms,150ms",
		"--jitter", "0",
		"--heartbeat-interval", "1s",
		"--shutdown-grace", "2s",
	}, extra...)
}

// startReplicas starts one replica per name on one Redis and waits until
// every one is SERVING.
func startReplicas(t *testing.T, names []string, redisURL string, env []string, extra ...string) []*proc {
	t.Helper()
	procs := make([]*proc, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		procs[i] = launch(t, name, env, replicaArgs(redisURL, extra...)...)
	}
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.waitHealth(t, healthpb.HealthCheckResponse_SERVING, 20*time.Second)
		}()
	}
	wg.Wait()
	return procs
}

// openStore opens the test's own view of the replicas' Redis: the checks
// read through the store, the same code the replicas run.
func openStore(t *testing.T, srv *testredis.Server) *redisstore.Store {
	t.Helper()
	st, err := redisstore.Open(context.Background(), srv.URL(), redisstore.Options{AllowEviction: true})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

// seedDue records n first failures (jobs prefix-0 …) whose retries are all
// due at the same instant due, through the store (the code the replicas
// run for ReportFailure): the replicas then race for n retries at once.
func seedDue(t *testing.T, st store.Store, prefix string, n int, due time.Time) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	now := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				_, err := st.RecordFailure(context.Background(), store.Failure{
					JobID: ids[i], Phase: "extraction", ErrorType: "Timeout", ErrorMessage: "seeded",
					Payload: payloadOf(t, map[string]any{"n": float64(i)}), Now: now,
					Verdict: store.Verdict{
						Decision: store.DecisionRetry, Retryable: true, Reason: "seeded", NextRetryCount: 1,
						Delay: due.Sub(now), DueAt: due,
					},
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	return ids
}

// payloadOf encodes a payload as the server stores it: a
// google.protobuf.Struct in deterministic wire format.
func payloadOf(t *testing.T, m map[string]any) []byte {
	t.Helper()
	st, err := structpb.NewStruct(m)
	require.NoError(t, err)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	require.NoError(t, err)
	return b
}
