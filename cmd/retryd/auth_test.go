package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/auth/authtest"
	"github.com/retryd/retryd/internal/testredis"
)

// step is one line of README.md's authentication walkthrough: a command of
// a ```sh auth block (which must succeed), or a "$ " command of a
// ```console auth block with the output shown under it (which must match).
type step struct {
	console bool
	line    string
	want    []string
}

// authWalkthrough reads the ```sh auth and ```console auth blocks of
// README.md, in order.
func authWalkthrough(t *testing.T) []step {
	t.Helper()
	f, err := os.Open("../../README.md")
	require.NoError(t, err)
	defer f.Close()
	var steps []step
	block := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh auth" || line == "```console auth":
			block = line
		case strings.HasPrefix(line, "```"):
			block = ""
		case block == "```sh auth":
			require.False(t, strings.HasSuffix(line, `\`), "keep README walkthrough commands on one line: %s", line)
			steps = append(steps, step{line: line})
		case block == "```console auth" && strings.HasPrefix(line, "$ "):
			steps = append(steps, step{console: true, line: strings.TrimPrefix(line, "$ ")})
		case block == "```console auth":
			require.NotEmpty(t, steps, "output before the first command of a console block")
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, line)
		}
	}
	require.NoError(t, sc.Err())
	return steps
}

// shell is one bash process that runs the README's lines in order, so that
// variables and the working directory carry over as in the reader's
// terminal.
type shell struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	n     int
}

func newShell(t *testing.T, dir string) *shell {
	t.Helper()
	cmd := exec.Command("bash", "--noprofile", "--norc")
	cmd.Dir = dir
	// grpcurl is the pinned build, first on PATH; nothing of the
	// developer's environment leaks into the walkthrough but PATH.
	cmd.Env = []string{"PATH=" + filepath.Dir(bin.grpcurl) + ":" + os.Getenv("PATH"), "HOME=" + dir, "LC_ALL=C"}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = w, w
	require.NoError(t, cmd.Start())
	w.Close()
	s := &shell{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		r.Close()
	})
	return s
}

// run runs one line and returns its output (stdout and stderr) and exit status.
func (s *shell) run(line string) (string, int) {
	s.t.Helper()
	s.n++
	marker := fmt.Sprintf("__readme_step_%d__", s.n)
	_, err := fmt.Fprintf(s.stdin, "%s\nprintf '\\n%s %%d\\n' $?\n", line, marker)
	require.NoError(s.t, err)
	var out []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			require.True(s.t, ok, "the shell exited during: %s\n%s", line, strings.Join(out, "\n"))
			if rest, found := strings.CutPrefix(l, marker+" "); found {
				var rc int
				_, err := fmt.Sscan(rest, &rc)
				require.NoError(s.t, err)
				// Drop the newline printf put before the marker.
				if n := len(out); n > 0 && out[n-1] == "" {
					out = out[:n-1]
				}
				return strings.Join(out, "\n"), rc
			}
			out = append(out, l)
		case <-timeout:
			s.t.Fatalf("no end of %q after 30s:\n%s", line, strings.Join(out, "\n"))
		}
	}
}

// startAuth runs retryd in dir with args (a free loopback address unless
// args have --listen; a fresh data directory; debug logs), and waits until
// health answers SERVING — over TLS trusting roots when they are set.
func startAuth(t *testing.T, dir string, roots *x509.CertPool, env []string, args ...string) *authProc {
	t.Helper()
	addr := ""
	for i, a := range args {
		if a == "--listen" && i+1 < len(args) {
			// All interfaces include loopback, where the health check dials.
			addr = strings.Replace(args[i+1], "0.0.0.0:", "127.0.0.1:", 1)
		}
	}
	if addr == "" {
		addr = freeAddr(t)
		args = append([]string{"--listen", addr}, args...)
	}
	cmd := exec.Command(bin.retryd, append([]string{"--data-dir", t.TempDir(), "--log-level", "debug"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	p := &authProc{cmd: cmd, addr: addr, logs: &syncBuf{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	require.NoError(t, cmd.Start())
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		if t.Failed() {
			t.Logf("retryd %v logs:\n%s", args, p.logs)
		}
	})
	creds := insecure.NewCredentials()
	if roots != nil {
		creds = credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
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
			p.done <- err
			t.Fatalf("retryd exited: %v\n%s", err, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("retryd not SERVING after 20s (last: %v)\n%s", err, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// authProc is a running retryd whose logs may be read while it runs.
type authProc struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuf
	done chan error
}

// syncBuf is a buffer that the process's output copier and the test may
// use at once.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// stop ends a retryd with SIGTERM and waits for it.
func (p *authProc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(20 * time.Second):
		t.Fatalf("retryd did not stop\n%s", p.logs)
	}
}

// walkthroughFiles writes the certificates the README's TLS examples name,
// as an operator's CA would issue them.
func walkthroughFiles(t *testing.T, dir string) *authtest.CA {
	t.Helper()
	ca := authtest.NewCA(t, "walkthrough CA")
	ca.WriteFile(t, dir, "ca.pem")
	ca.Server(t).WriteFiles(t, dir, "server")
	ca.Issue(t, authtest.Leaf{CommonName: "extraction-worker"}).WriteFiles(t, dir, "worker")
	ca.Issue(t, authtest.Leaf{CommonName: "ops-admin"}).WriteFiles(t, dir, "ops-admin")
	return ca
}

// TestReadmeAuthWalkthrough runs README.md's Authentication examples, in
// order, in one shell: token files, a retryd with tokens, calls with each
// role and without, then a retryd with TLS and client certificates. Then it
// checks that no token reached retryd's logs (at debug level).
func TestReadmeAuthWalkthrough(t *testing.T) {
	t.Parallel()
	steps := authWalkthrough(t)
	dir := t.TempDir()
	ca := walkthroughFiles(t, dir)
	sh := newShell(t, dir)
	var servers []*authProc
	var current *authProc
	grpcurls, consoles := 0, 0
	for _, st := range steps {
		if fields := strings.Fields(st.line); !st.console && fields[0] == "retryd" {
			require.NotContains(t, st.line, `"`, "retryd lines are split on spaces: no quoting")
			if current != nil {
				current.stop(t)
			}
			var roots *x509.CertPool
			if strings.Contains(st.line, "--tls-cert") {
				roots = ca.Pool()
			}
			current = startAuth(t, dir, roots, nil, fields[1:]...)
			servers = append(servers, current)
			continue
		}
		line := st.line
		if current != nil {
			line = strings.ReplaceAll(line, "127.0.0.1:50051", current.addr)
		}
		if strings.HasPrefix(line, "grpcurl ") {
			require.NotNil(t, current, "a grpcurl line before any retryd line: %s", line)
			grpcurls++
		}
		out, rc := sh.run(line)
		if !st.console {
			require.Equal(t, 0, rc, "%s\n%s", line, out)
			continue
		}
		consoles++
		require.Equal(t, strings.Join(st.want, "\n"), out, "the README shows another output for\n%s", line)
	}
	require.Len(t, servers, 2, "the walkthrough starts a retryd with tokens, then one with TLS")
	require.GreaterOrEqual(t, grpcurls, 8)
	require.GreaterOrEqual(t, consoles, 4)

	secrets := []string{"not-a-token-of-this-retryd"}
	for _, f := range []string{"worker.token", "admin.token"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		secrets = append(secrets, strings.TrimSpace(string(b)))
	}
	for _, p := range servers {
		logs := p.logs.String()
		require.Contains(t, logs, "auth.enabled=true")
		require.Contains(t, logs, "grpc.code=PermissionDenied", "calls are logged, with their code")
		for _, s := range secrets {
			require.NotContains(t, logs, s, "a token reached the logs")
		}
	}
}

// TestProtectedMode: beyond loopback without credentials retryd refuses to
// start and says what to pass; with credentials, or told to, it serves.
func TestProtectedMode(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(bin.retryd, "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()).CombinedOutput()
	require.Error(t, err)
	require.Equal(t, 1, err.(*exec.ExitError).ExitCode())
	require.Contains(t, string(out), "retryd: refusing to serve on [::]:")
	require.Contains(t, string(out), "(every interface) without authentication")
	require.Contains(t, string(out), "pass --allow-unauthenticated (RETRYD_ALLOW_UNAUTHENTICATED=true)")

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		warn string
	}{
		{"told to", nil, []string{"--allow-unauthenticated"}, "serving without authentication beyond loopback (--allow-unauthenticated)"},
		{"told to, in the environment", []string{"RETRYD_ALLOW_UNAUTHENTICATED=true"}, nil, "serving without authentication beyond loopback"},
		{"with tokens", []string{"RETRYD_WORKER_TOKENS=worker-token-0123456789", "RETRYD_ADMIN_TOKENS=admin-token-0123456789"}, nil,
			"bearer tokens travel in clear text on a non-loopback address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, port, err := net.SplitHostPort(freeAddr(t))
			require.NoError(t, err)
			p := startAuth(t, t.TempDir(), nil, tc.env, append([]string{"--listen", "0.0.0.0:" + port}, tc.args...)...)
			require.Contains(t, p.logs.String(), tc.warn)
		})
	}
}

// TestAuthOverRedisTLS: retryd on a Redis reached with rediss:// as the
// README's least-privilege ACL user, its private CA given by
// --redis-tls-ca, and a client certificate (--redis-tls-cert, -key) that
// Redis requires (tls-auth-clients yes); workers and admins authenticate
// with tokens; the Redis password never reaches the logs.
func TestAuthOverRedisTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := authtest.NewCA(t, "redis CA")
	srv := testredis.Start(t, testredis.TLS(ca, true))
	clientCert, clientKey := ca.Issue(t, authtest.Leaf{CommonName: "retryd"}).WriteFiles(t, dir, "redis-client")
	const password = "redis-password-0123456789"
	createACLUserFromReadme(t, srv, password)

	const workerToken, adminToken = "worker-token-0123456789abcdef", "admin-token-0123456789abcdef"
	p := startAuth(t, dir, nil, []string{
		"RETRYD_REDIS_URL=rediss://retryd:" + password + "@" + srv.TLSAddr() + "/0",
		"RETRYD_REDIS_TLS_CA=" + ca.WriteFile(t, dir, "redis-ca.pem"),
		"RETRYD_REDIS_TLS_CERT=" + clientCert,
		"RETRYD_REDIS_TLS_KEY=" + clientKey,
		"RETRYD_WORKER_TOKENS=" + workerToken,
		"RETRYD_ADMIN_TOKENS=" + adminToken,
	})
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	with := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
	}
	retry, admin := retrydv1.NewRetryServiceClient(conn), retrydv1.NewAdminServiceClient(conn)
	_, err = retry.ReportFailure(t.Context(), &retrydv1.ReportFailureRequest{JobId: "r1", Phase: "extraction", ErrorType: "Timeout"})
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	_, err = retry.ReportFailure(with(workerToken), &retrydv1.ReportFailureRequest{JobId: "r1", Phase: "extraction", ErrorType: "Timeout"})
	require.NoError(t, err)
	_, err = admin.GetJob(with(workerToken), &retrydv1.GetJobRequest{JobId: "r1"})
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	job, err := admin.GetJob(with(adminToken), &retrydv1.GetJobRequest{JobId: "r1"})
	require.NoError(t, err)
	require.Equal(t, retrydv1.JobState_JOB_STATE_PROCESSING, job.GetJob().GetState())

	// It is in Redis, written by the ACL user over TLS.
	n, err := srv.Client().Exists(t.Context(), "{retryd}:j:r1").Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	clients, err := srv.Client().ClientList(t.Context()).Result()
	require.NoError(t, err)
	require.Contains(t, clients, "user=retryd")
	logs := p.logs.String()
	for _, s := range []string{password, workerToken, adminToken} {
		require.NotContains(t, logs, s)
	}
}

// createACLUserFromReadme runs README.md's `ACL SETUSER retryd on >PASSWORD …`
// line on srv (store/redisstore/acl_test.go checks the line in depth).
func createACLUserFromReadme(t *testing.T, srv *testredis.Server, password string) {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "ACL SETUSER retryd on >PASSWORD ") {
			continue
		}
		var cmd []any
		for _, a := range strings.Fields(line) {
			cmd = append(cmd, strings.Replace(a, ">PASSWORD", ">"+password, 1))
		}
		require.NoError(t, srv.Client().Do(t.Context(), cmd...).Err())
		return
	}
	t.Fatal("README.md has no `ACL SETUSER retryd on >PASSWORD ...` line")
}
