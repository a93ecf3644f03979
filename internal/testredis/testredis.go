// Package testredis starts throwaway redis-server processes for tests.
//
// Every test that needs Redis starts its own server with Start: on a unix
// socket in a short temporary directory by default (no port to race for),
// or on a free loopback port (TCP, Cluster, Sentinel). Persistence is off
// unless asked for, and the server is stopped when the test ends. Tests
// never touch a Redis they did not start, and never port 6379.
//
//	srv := testredis.Start(t)
//	st, err := redisstore.Open(ctx, srv.URL(), redisstore.Options{})
package testredis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/internal/auth/authtest"
)

// binary is the server executable looked up on PATH.
const binary = "redis-server"

// notFound is the message a test fails with when the binary is missing.
const notFound = "redis-server not found: install it with `apt-get install redis-server` (Debian)"

// maxSocketPath is the longest unix socket path we create: sun_path holds
// 108 bytes including the terminating NUL, and Linux silently truncates
// longer paths, so we keep one byte of margin under 107.
const maxSocketPath = 100

// readyTimeout bounds how long Start waits for the first PONG. A cold
// redis-server answers in a few milliseconds; loading a large AOF can take
// longer, which is why this is generous.
const readyTimeout = 10 * time.Second

// stopTimeout bounds a graceful shutdown before the process is killed.
const stopTimeout = 5 * time.Second

// Option configures Start.
type Option func(*config)

type config struct {
	tcp         bool
	dir         string
	appendfsync string
	maxmemory   string
	policy      string
	lines       []string
	cluster     bool
	sentinel    *sentinelConfig
	tls         *tlsConfig
}

type tlsConfig struct {
	ca          *authtest.CA
	authClients bool
}

type sentinelConfig struct {
	masterName string
	master     *Server
}

// AOF turns on the append-only file with the given appendfsync policy
// ("always", "everysec" or "no"), so that a Kill and Restart keep every
// acknowledged write ("always") or most of them.
func AOF(appendfsync string) Option {
	return func(c *config) { c.appendfsync = appendfsync }
}

// Dir makes the server keep its data (AOF, RDB) in dir instead of a fresh
// temporary directory, so that a second Start can open the same data. The
// directory is not removed at cleanup.
func Dir(dir string) Option {
	return func(c *config) { c.dir = dir }
}

// MaxMemory sets maxmemory (a redis size such as "2mb") and the eviction
// policy ("noeviction" makes writes fail with OOM once the limit is hit).
func MaxMemory(size, policy string) Option {
	return func(c *config) { c.maxmemory, c.policy = size, policy }
}

// Config appends raw redis.conf lines (for example "hash-max-listpack-value 128").
func Config(lines ...string) Option {
	return func(c *config) { c.lines = append(c.lines, lines...) }
}

// TCP makes the server listen on a free loopback port instead of a unix socket.
func TCP() Option {
	return func(c *config) { c.tcp = true }
}

// Cluster starts a one-node Redis Cluster that owns every hash slot (on a
// loopback port, with its cluster bus on a second free port). Redis enforces
// the cluster's rules even with one node: a command or script whose keys
// span two hash slots fails with CROSSSLOT, which is what the tests of a
// cluster-safe key layout need.
func Cluster() Option {
	return func(c *config) { c.cluster, c.tcp = true, true }
}

// Sentinel starts a Redis Sentinel (redis-server --sentinel) that monitors
// master under masterName, instead of a data server. master must listen on
// TCP (Sentinel addresses masters by IP and port).
func Sentinel(masterName string, master *Server) Option {
	return func(c *config) {
		c.sentinel = &sentinelConfig{masterName: masterName, master: master}
		c.tcp = true
	}
}

// TLS adds a TLS port (TLSURL) with a server certificate of ca (for
// 127.0.0.1) to a TCP server. With authClients, Redis requires a client
// certificate signed by ca (tls-auth-clients yes); else it asks for none.
func TLS(ca *authtest.CA, authClients bool) Option {
	return func(c *config) {
		c.tls = &tlsConfig{ca: ca, authClients: authClients}
		c.tcp = true
	}
}

// Server is one running (or killed) redis-server owned by a test.
type Server struct {
	t       testing.TB
	cfg     config
	runDir  string // short directory holding the socket, config and log
	dataDir string
	socket  string   // unix socket path, or ""
	port    int      // TCP port, or 0
	busPort int      // cluster bus port, or 0
	tlsPort int      // TLS port, or 0
	tlsConf []string // the TLS option's redis.conf lines (certificate files in runDir)

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	client *redis.Client
}

// Start starts a redis-server configured by opts, waits until it answers
// PING and registers a cleanup that stops it. It fails the test when
// redis-server is not installed.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if _, err := exec.LookPath(binary); err != nil {
		t.Fatal(notFound)
	}
	if cfg.sentinel != nil && cfg.sentinel.master.port == 0 {
		t.Fatal("testredis: Sentinel needs a master started with TCP()")
	}

	runDir, err := shortTempDir()
	if err != nil {
		t.Fatalf("testredis: %v", err)
	}
	s := &Server{t: t, cfg: cfg, runDir: runDir, dataDir: cfg.dir}
	if s.dataDir == "" {
		s.dataDir = runDir
	}
	t.Cleanup(s.cleanup)
	if c := cfg.tls; c != nil {
		cert, key := c.ca.Server(t).WriteFiles(t, runDir, "redis")
		yes := map[bool]string{true: "yes", false: "no"}[c.authClients]
		s.tlsConf = []string{"tls-cert-file " + cert, "tls-key-file " + key,
			"tls-ca-cert-file " + c.ca.WriteFile(t, runDir, "ca.pem"), "tls-auth-clients " + yes}
	}

	if !cfg.tcp {
		s.socket = filepath.Join(runDir, "redis.sock")
		if err := s.start(); err != nil {
			t.Fatalf("testredis: %v", err)
		}
		return s
	}
	// A free port can be taken by someone else between our probe and the
	// server's bind; try a few.
	for try := 0; ; try++ {
		if s.port, err = freePort(); err == nil && cfg.cluster {
			s.busPort, err = freePort()
		}
		if err == nil && cfg.tls != nil {
			s.tlsPort, err = freePort()
		}
		if err != nil {
			t.Fatalf("testredis: %v", err)
		}
		if err = s.start(); err == nil {
			return s
		}
		if try == 4 {
			t.Fatalf("testredis: %v", err)
		}
	}
}

// URL is a URL that redis.ParseURL (and redisstore.Open) accepts: unix://
// for a socket server, redis:// for a TCP one (also for Cluster and Sentinel
// servers, whose store URLs the caller builds from Addr).
func (s *Server) URL() string {
	if s.socket != "" {
		return "unix://" + s.socket
	}
	return "redis://" + s.Addr()
}

// TLSURL is the rediss:// URL of the TLS port (TLS option); its
// certificate is signed by the option's CA.
func (s *Server) TLSURL() string { return "rediss://" + s.TLSAddr() + "/0" }

// TLSAddr is the host:port of the TLS port (TLS option).
func (s *Server) TLSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tlsPort)) }

// Addr is the socket path or the host:port the server listens on.
func (s *Server) Addr() string {
	if s.socket != "" {
		return s.socket
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Client returns a client of the server for seeding and inspecting data. It
// survives Kill and Restart (it reconnects) and is closed at cleanup.
func (s *Server) Client() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = redis.NewClient(s.options())
	}
	return s.client
}

// Kill stops the server with SIGKILL, as a crash would: nothing is flushed
// beyond what its appendfsync policy already wrote.
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same directory, socket or port and
// data. A running server is first shut down gracefully.
func (s *Server) Restart() {
	s.t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("testredis: restart: %v", err)
	}
}

// options are the go-redis options reaching this server.
func (s *Server) options() *redis.Options {
	o := &redis.Options{Network: "tcp", Addr: s.Addr(), DialTimeout: time.Second}
	if s.socket != "" {
		o.Network = "unix"
	}
	return o
}

// conf renders redis.conf.
func (s *Server) conf() string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	if s.socket != "" {
		line("port 0")
		line("unixsocket %s", s.socket)
		line("unixsocketperm 700")
	} else {
		line("port %d", s.port)
		line("bind 127.0.0.1")
	}
	line("dir %s", s.dataDir)
	line("daemonize no")
	line(`logfile ""`)
	if s.cfg.sentinel != nil {
		m := s.cfg.sentinel
		line("sentinel monitor %s 127.0.0.1 %d 1", m.masterName, m.master.port)
		line("sentinel down-after-milliseconds %s 1000", m.masterName)
		return b.String()
	}
	line(`save ""`)
	if s.cfg.appendfsync != "" {
		line("appendonly yes")
		line("appendfsync %s", s.cfg.appendfsync)
	} else {
		line("appendonly no")
	}
	if s.cfg.maxmemory != "" {
		line("maxmemory %s", s.cfg.maxmemory)
		if s.cfg.policy != "" {
			line("maxmemory-policy %s", s.cfg.policy)
		}
	}
	if s.cfg.cluster {
		line("cluster-enabled yes")
		line("cluster-port %d", s.busPort)
		line("cluster-config-file %s", filepath.Join(s.runDir, "nodes.conf"))
	}
	if s.tlsPort != 0 {
		line("tls-port %d", s.tlsPort)
		for _, l := range s.tlsConf {
			line("%s", l)
		}
	}
	for _, l := range s.cfg.lines {
		line("%s", l)
	}
	return b.String()
}

// start launches the process and waits for it to answer.
func (s *Server) start() error {
	confPath := filepath.Join(s.runDir, "redis.conf")
	// Sentinel rewrites its config file, so it is written afresh each time.
	if err := os.WriteFile(confPath, []byte(s.conf()), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(s.runDir, "redis.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()

	args := []string{confPath}
	if s.cfg.sentinel != nil {
		args = append(args, "--sentinel")
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Kill the server if the test binary dies without running cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", binary, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	if err := s.waitReady(done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		s.mu.Lock()
		s.cmd = nil
		s.mu.Unlock()
		logText, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\nredis-server log:\n%s", err, tail(string(logText), 2000))
	}
	return nil
}

// waitReady polls PING until it answers, the process exits or time runs out;
// a cluster node is ready once it owns every slot and reports state ok.
func (s *Server) waitReady(done <-chan struct{}) error {
	c := redis.NewClient(s.options())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	poll := func(check func() error) error {
		for {
			err := check()
			if err == nil {
				return nil
			}
			select {
			case <-done:
				return errors.New("redis-server exited during startup")
			case <-ctx.Done():
				return fmt.Errorf("redis-server not ready after %v: %w", readyTimeout, err)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if err := poll(func() error { return c.Ping(ctx).Err() }); err != nil {
		return err
	}
	if !s.cfg.cluster {
		return nil
	}
	// A restarted node already owns its slots (nodes.conf); adding them again
	// would fail, so only a node without slots gets them.
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	if strings.Contains(info, "cluster_slots_assigned:0") {
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
			return fmt.Errorf("assign cluster slots: %w", err)
		}
	}
	return poll(func() error {
		info, err := c.ClusterInfo(ctx).Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return errors.New("cluster state is not ok yet")
		}
		return nil
	})
}

// stop shuts a running server down gracefully (SIGTERM: the AOF is flushed),
// killing it if it does not exit in time.
func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (s *Server) cleanup() {
	s.mu.Lock()
	c := s.client
	s.client = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	s.stop()
	_ = os.RemoveAll(s.runDir)
}

// shortTempDir makes a fresh directory whose socket path fits in sun_path,
// under $TMPDIR when that is short enough, else under /tmp.
func shortTempDir() (string, error) {
	const socketName = "/redis.sock"
	base := os.TempDir()
	// MkdirTemp appends the pattern and up to 20 random digits.
	if len(base)+len("/rd")+20+len(socketName) > maxSocketPath {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "rd")
	if err != nil {
		return "", err
	}
	if len(dir)+len(socketName) > maxSocketPath {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("temporary directory %q is too long for a unix socket path", dir)
	}
	return dir, nil
}

// freePort asks the kernel for a free loopback port. It is never 6379 (the
// port of a Redis the developer may be running), which is skipped.
func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		// A cluster bus defaults to port+10000; we set cluster-port
		// explicitly, but keep both far from Redis's well-known ports.
		if port != 6379 && port != 16379 && port != 26379 {
			return port, nil
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
