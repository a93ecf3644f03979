package main_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
)

// bin holds the binaries built once for every test here: retryd itself and
// grpcurl at the version go.mod pins.
var bin struct{ retryd, grpcurl string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "retryd-e2e")
	if err != nil {
		panic(err)
	}
	bin.retryd = filepath.Join(dir, "retryd")
	bin.grpcurl = filepath.Join(dir, "grpcurl")
	for _, b := range [][]string{{bin.retryd, "."}, {bin.grpcurl, "github.com/fullstorydev/grpcurl/cmd/grpcurl"}} {
		out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", b[1], err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running retryd.
type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *bytes.Buffer
	done chan error
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// start runs retryd with args and env, and waits until health says SERVING.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(bin.retryd, append([]string{"--listen", addr}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	require.NoError(t, cmd.Start())
	p := &proc{cmd: cmd, addr: addr, logs: logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("retryd logs:\n%s", logs)
		}
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return p
		}
		select {
		case err := <-p.done:
			t.Fatalf("retryd exited: %v\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("retryd not SERVING after 20s (last: %v, %v)\n%s", h, err, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readmeCommands returns every grpcurl command of README.md's ```sh blocks,
// in order. They are run exactly as written, so that the README cannot rot.
func readmeCommands(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../README.md")
	require.NoError(t, err)
	defer f.Close()
	var cmds []string
	inSh := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh": // not "```sh auth": auth_test.go runs those
			inSh = true
		case strings.HasPrefix(line, "```"):
			inSh = false
		case inSh && strings.HasPrefix(line, "grpcurl "):
			cmds = append(cmds, line)
		}
	}
	require.NoError(t, sc.Err())
	return cmds
}

var leaseRE = regexp.MustCompile(`"leaseId": "([^"]+)"`)

// TestReadmeWalkthrough runs the README's grpcurl examples, in order,
// against the real binary on each store: reflection, health, a failure, the
// backoff list, the retry arriving on a Dispatch stream, giving up, manual
// retries, history, stats and cancel.
func TestReadmeWalkthrough(t *testing.T) {
	cmds := readmeCommands(t)
	require.GreaterOrEqual(t, len(cmds), 10, "README.md should show every admin action")
	for _, kind := range []string{"embedded", "redis"} {
		t.Run(kind, func(t *testing.T) {
			args := []string{"--data-dir", t.TempDir()}
			if kind == "redis" {
				args = append(args, "--redis-url", testredis.Start(t).URL())
			}
			p := start(t, []string{"RETRY_DELAY_1=200ms"}, args...)
			lease := ""
			for _, line := range cmds {
				line = strings.ReplaceAll(line, "127.0.0.1:50051", p.addr)
				line = strings.ReplaceAll(line, "LEASE_ID", lease)
				line = strings.Replace(line, "grpcurl ", bin.grpcurl+" ", 1)
				dispatch := strings.Contains(line, "/Dispatch")
				if dispatch {
					line = regexp.MustCompile(`-max-time \d+`).ReplaceAllString(line, "-max-time 2")
				}
				out, err := exec.Command("bash", "-c", line).CombinedOutput()
				if dispatch {
					require.Contains(t, string(out), "DeadlineExceeded", "%s\n%s", line, out)
					m := leaseRE.FindAllStringSubmatch(string(out), -1)
					require.NotEmpty(t, m, "the Dispatch example shows no task:\n%s", out)
					lease = m[len(m)-1][1]
					continue
				}
				require.NoError(t, err, "%s\n%s", line, out)
			}
		})
	}
}

// TestGracefulShutdown: SIGTERM ends open Dispatch streams and the process
// exits 0 within the grace period.
func TestGracefulShutdown(t *testing.T) {
	p := start(t, nil, "--data-dir", t.TempDir(), "--shutdown-grace", "5s")
	stream := exec.Command(bin.grpcurl, "-plaintext", "-d", `{"phases":["extraction"]}`, p.addr, "retryd.v1.RetryService/Dispatch")
	var out bytes.Buffer
	stream.Stdout, stream.Stderr = &out, &out
	require.NoError(t, stream.Start())
	time.Sleep(300 * time.Millisecond) // let grpcurl open the stream
	began := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		require.NoError(t, err, "retryd should exit 0 on SIGTERM\n%s", p.logs)
		p.done <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatalf("retryd did not stop within 10s\n%s", p.logs)
	}
	require.Less(t, time.Since(began), 5*time.Second)
	_ = stream.Wait()
	require.Contains(t, out.String(), "Unavailable", "the stream ends with UNAVAILABLE so that the worker reconnects")
	require.Contains(t, p.logs.String(), "retryd stopped")
}

// TestVersion: --version prints the build on one line and exits 0.
func TestVersion(t *testing.T) {
	out, err := exec.Command(bin.retryd, "--version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Regexp(t, `^retryd \S+ .*go1\.\d+.*\n$`, string(out))
}

// TestHelpListsEveryFlag: --help names each flag's environment twin.
func TestHelpListsEveryFlag(t *testing.T) {
	out, err := exec.Command(bin.retryd, "--help").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, env := range []string{"RETRYD_LISTEN", "RETRYD_REDIS_URL", "RETRYD_DATA_DIR", "RETRYD_METRICS_LISTEN", "RETRY_JITTER", "MAX_RETRIES", "RETRY_DELAY_"} {
		require.Contains(t, string(out), env)
	}
}

// TestMetricsEndpoint: /metrics serves the RPC metrics and retryd's own.
func TestMetricsEndpoint(t *testing.T) {
	maddr := freeAddr(t)
	p := start(t, nil, "--data-dir", t.TempDir(), "--metrics-listen", maddr, "--retry-delays", "10ms")
	retry, _ := clients(t, p.addr)
	ctx := context.Background()
	for _, job := range []string{"m1", "m2"} {
		_, err := retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: job, Phase: "extraction", ErrorType: "Timeout"})
		require.NoError(t, err)
	}
	// One retry is dispatched (lag observed), the other stays in the backlog.
	stream, err := retry.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, MaxInFlight: 1})
	require.NoError(t, err)
	for {
		msg, err := stream.Recv()
		require.NoError(t, err)
		if msg.GetTask() != nil {
			break
		}
	}
	resp, err := http.Get("http://" + maddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="ReportFailure",grpc_service="retryd.v1.RetryService",grpc_type="unary"} 2`,
		`retryd_retries_scheduled_total{error_type="Timeout",phase="extraction"} 2`,
		`retryd_backlog{phase="extraction"} 1`,
		`retryd_dispatched_total{phase="extraction"} 1`,
		`retryd_dispatch_lag_seconds_count{phase="extraction"} 1`,
		`retryd_backlog_overdue_seconds{phase="extraction"} `,
		`retryd_build_info{goversion="go1.`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err = http.Get("http://" + maddr + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no profiler without --metrics-pprof")
}

// TestMetricsPprof: with --metrics-pprof the metrics address serves Go's
// profiler too.
func TestMetricsPprof(t *testing.T) {
	maddr := freeAddr(t)
	start(t, []string{"RETRYD_METRICS_PPROF=true"}, "--data-dir", t.TempDir(), "--metrics-listen", maddr)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/goroutine?debug=1", "/metrics"} {
		resp, err := http.Get("http://" + maddr + path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
	}
}
