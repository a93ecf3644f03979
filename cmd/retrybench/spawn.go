package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/retryd/retryd/internal/app"
	"github.com/retryd/retryd/internal/config"
	"github.com/retryd/retryd/store/redisstore"
)

// startTimeout bounds how long a spawned redis-server or retryd may take to
// answer. Both start in milliseconds; the margin is for a loaded machine.
const startTimeout = 20 * time.Second

// stopTimeout bounds a graceful stop before the process is killed.
const stopTimeout = 10 * time.Second

// redisNotFound is the message when --spawn redis cannot find the server.
const redisNotFound = "redis-server not found: install it with `apt-get install redis-server` (Debian)"

// environment is where one run's retryd is and how to read what its store
// costs. close stops whatever the run started, newest first.
type environment struct {
	addr string
	// desc says what runs retryd, for the summary.
	desc string
	// redis reads INFO and SLOWLOG of the store's Redis; nil when unknown.
	redis *redis.Client
	// dataFile is the embedded store's file; "" when unknown.
	dataFile string
	// retrydPID is the spawned retryd process, for its CPU time; 0 when
	// retryd is not a child process.
	retrydPID int
	closers   []func()
}

func (e *environment) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

// setupEnvironment starts (--spawn) or locates (--target) the run's retryd.
// retrydBin is the binary to spawn ("" with --in-process or --target).
func setupEnvironment(ctx context.Context, o options, retrydBin string) (_ *environment, err error) {
	e := &environment{}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if o.target != "" {
		e.addr, e.desc = o.target, "running at "+o.target
		if o.targetRedis != "" {
			c, err := redisstore.NewClient(o.targetRedis, nil)
			if err != nil {
				return nil, err
			}
			rc, ok := c.(*redis.Client)
			if !ok {
				_ = c.Close()
				return nil, errors.New("--target-redis: INFO is read from one server: give a redis://, rediss:// or unix:// URL")
			}
			e.redis = rc
			e.closers = append(e.closers, func() { _ = rc.Close() })
		}
		if o.targetDataDir != "" {
			e.dataFile = filepath.Join(o.targetDataDir, app.DBFileName)
		}
		return e, waitServing(ctx, e.addr, nil)
	}

	dir, err := os.MkdirTemp("", "retrybench-")
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { _ = os.RemoveAll(dir) })
	args := []string{
		"--listen", "127.0.0.1:0",
		"--log-format", "json",
		"--jitter", "0",
		"--retry-delays", o.delay.String(),
		"--max-retries", strconv.Itoa(o.k),
		"--shutdown-grace", "2s",
	}
	switch o.spawn {
	case "redis":
		rs, err := startRedis(ctx, filepath.Join(dir, "redis"), o.redisSocket)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, rs.stop)
		e.redis = rs.client
		e.desc = rs.desc
		args = append(args, "--redis-url", rs.url)
	case "embedded":
		data := filepath.Join(dir, "data")
		e.dataFile = filepath.Join(data, app.DBFileName)
		e.desc = "embedded store in " + data
		args = append(args, "--data-dir", data)
	}

	var rd *retrydRunner
	if o.inProcess {
		rd, err = startInProcess(ctx, args, filepath.Join(dir, "retryd.log"))
		e.desc = "retryd in-process, " + e.desc
	} else {
		rd, err = startRetryd(ctx, retrydBin, args, filepath.Join(dir, "retryd.log"))
		e.desc = "retryd " + retrydBin + ", " + e.desc
	}
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, rd.stop)
	e.addr, e.retrydPID = rd.addr, rd.pid
	return e, waitServing(ctx, e.addr, rd.exited)
}

// waitServing waits until retryd's health service answers SERVING, or
// exited is closed (the process died).
func waitServing(ctx context.Context, addr string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to retryd at %s: %w", addr, err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for {
		res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("retryd at %s is not SERVING after %v (last answer: %v, %v)", addr, startTimeout, res.GetStatus(), err)
		case <-exited:
			return errors.New("retryd exited before serving")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// buildRetryd builds cmd/retryd into dir. It needs the working directory
// to be inside the retryd module (as `make bench` and the tests run it).
func buildRetryd(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "retryd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/retryd/retryd/cmd/retryd")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build of cmd/retryd failed (run retrybench inside the retryd module, or pass --retryd PATH): %v\n%s", err, out)
	}
	return bin, nil
}

// redisServer is a redis-server this run started.
type redisServer struct {
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
	url    string
	desc   string
	client *redis.Client
}

// startRedis starts redis-server with its built-in defaults (those of
// Debian's package: RDB snapshot rules, no AOF) in dir, on a free loopback
// port (never 6379) or a unix socket. The slow log records commands over
// 1 ms, the scale of the lag target.
func startRedis(ctx context.Context, dir string, socket bool) (*redisServer, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New(redisNotFound)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var lastErr error
	// A free port can be taken between finding it and redis binding it;
	// then try another.
	for range 3 {
		rs, err := tryStartRedis(ctx, dir, socket)
		if err == nil {
			return rs, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryStartRedis(ctx context.Context, dir string, socket bool) (*redisServer, error) {
	args := []string{
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
		"--daemonize", "no",
		"--slowlog-log-slower-than", "1000",
		"--slowlog-max-len", "1024",
	}
	rs := &redisServer{dir: dir, exited: make(chan struct{})}
	// No retries: SHUTDOWN drops the connection, and a retry would only
	// log a failed dial.
	opt := &redis.Options{MaxRetries: -1}
	if socket {
		sock := filepath.Join(dir, "redis.sock")
		args = append(args, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700")
		opt.Network, opt.Addr = "unix", sock
		rs.url = "unix://" + sock
	} else {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		args = append(args, "--bind", "127.0.0.1", "--port", strconv.Itoa(port))
		opt.Addr = addr
		rs.url = "redis://" + addr + "/0"
	}
	rs.cmd = exec.Command("redis-server", args...)
	rs.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := rs.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	go func() { _ = rs.cmd.Wait(); close(rs.exited) }()
	rs.client = redis.NewClient(opt)
	deadline := time.After(startTimeout)
	for {
		err := rs.client.Ping(ctx).Err()
		if err == nil {
			break
		}
		select {
		case <-rs.exited:
			_ = rs.client.Close()
			return nil, fmt.Errorf("redis-server exited at start: %s", tail(filepath.Join(dir, "redis.log")))
		case <-deadline:
			rs.stop()
			return nil, fmt.Errorf("redis-server does not answer PING after %v: %v", startTimeout, err)
		case <-ctx.Done():
			rs.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	version := "?"
	if info, err := rs.client.Info(ctx, "server").Result(); err == nil {
		version = infoField(info, "redis_version")
	}
	rs.desc = fmt.Sprintf("redis-server %s on %s", version, strings.TrimPrefix(rs.url, "unix://"))
	return rs, nil
}

// stop shuts the server down without saving and waits for it.
func (rs *redisServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_ = rs.client.ShutdownNoSave(ctx).Err() // the connection drops: an error is expected
	_ = rs.client.Close()
	select {
	case <-rs.exited:
	case <-ctx.Done():
		_ = rs.cmd.Process.Kill()
		<-rs.exited
	}
}

// freePort returns a loopback TCP port that was free a moment ago, never
// Redis's default 6379.
func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 {
			return port, nil
		}
	}
}

// retrydRunner is a retryd this run started, as a process or in-process.
type retrydRunner struct {
	addr   string
	pid    int // 0 in-process
	exited chan struct{}
	stop   func()
}

// retrydEnv is the spawned retryd's environment: none of the caller's
// RETRYD_*, MAX_RETRIES or <PHASE>_RETRY_DELAY_* variables, which would
// change the policy under the benchmark; Go runtime knobs pass through.
func retrydEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "PATH", "HOME", "TMPDIR", "GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG":
			env = append(env, kv)
		}
	}
	return env
}

// startRetryd runs the retryd binary with args, logging into logPath, and
// learns its address from the "retryd serving" log line (it listens on a
// port the kernel picked).
func startRetryd(ctx context.Context, bin string, args []string, logPath string) (*retrydRunner, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = retrydEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	r := &retrydRunner{exited: make(chan struct{}), pid: cmd.Process.Pid}
	addrs, logDone := scanLog(stderr, logPath)
	go func() { <-logDone; _ = cmd.Wait(); close(r.exited) }()
	r.stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-r.exited
		}
	}
	select {
	case r.addr = <-addrs:
		return r, nil
	case <-r.exited:
		return nil, fmt.Errorf("retryd exited at start: %s", tail(logPath))
	case <-time.After(startTimeout):
	case <-ctx.Done():
	}
	r.stop()
	return nil, fmt.Errorf("retryd did not start serving within %v: %s", startTimeout, tail(logPath))
}

// startInProcess runs retryd's app.Run inside this process, labelled
// side=retryd for CPU profiles.
func startInProcess(ctx context.Context, args []string, logPath string) (*retrydRunner, error) {
	cfg, err := config.Load(args, retrydEnv())
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	addrs, logDone := scanLog(pr, logPath)
	runCtx, cancel := context.WithCancel(context.Background())
	r := &retrydRunner{exited: make(chan struct{})}
	var runErr error
	go pprof.Do(runCtx, pprof.Labels("side", "retryd"), func(ctx context.Context) {
		runErr = app.Run(ctx, cfg, pw)
		_ = pw.Close()
		<-logDone
		close(r.exited)
	})
	r.stop = func() { cancel(); <-r.exited }
	select {
	case r.addr = <-addrs:
		return r, nil
	case <-r.exited:
		return nil, fmt.Errorf("retryd stopped at start: %v", runErr)
	case <-time.After(startTimeout):
	case <-ctx.Done():
	}
	r.stop()
	return nil, fmt.Errorf("retryd did not start serving within %v: %s", startTimeout, tail(logPath))
}

// scanLog copies retryd's JSON log into logPath and sends the address of
// its "retryd serving" line. logDone is closed when the log ends.
func scanLog(r io.Reader, logPath string) (<-chan string, <-chan struct{}) {
	addrs := make(chan string, 1)
	done := make(chan struct{})
	f, err := os.Create(logPath)
	go func() {
		defer close(done)
		if err == nil {
			defer f.Close()
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var once sync.Once
		for sc.Scan() {
			line := sc.Bytes()
			if f != nil {
				_, _ = f.Write(append(line, '\n'))
			}
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "retryd serving" && rec.Addr != "" {
				once.Do(func() { addrs <- rec.Addr })
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return addrs, done
}

// tail returns the end of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const keep = 2000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return "log " + path + ":\n" + string(b)
}
