package testredis

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/auth/authtest"
)

func TestStartSocket(t *testing.T) {
	t.Parallel()
	srv := Start(t)
	ctx := t.Context()
	require.True(t, strings.HasPrefix(srv.URL(), "unix:///"), srv.URL())
	require.LessOrEqual(t, len(srv.Addr()), maxSocketPath)

	// The URL is one go-redis accepts.
	opts, err := redis.ParseURL(srv.URL())
	require.NoError(t, err)
	c := redis.NewClient(opts)
	defer c.Close()
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	require.Equal(t, "v", srv.Client().Get(ctx, "k").Val())

	// Persistence is off by default: a crash loses everything.
	cfg, err := srv.Client().ConfigGet(ctx, "appendonly").Result()
	require.NoError(t, err)
	require.Equal(t, "no", cfg["appendonly"])
	srv.Kill()
	// go-redis retries dialing for seconds; a short deadline is enough here.
	down, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	require.Error(t, srv.Client().Ping(down).Err(), "a killed server must not answer")
	srv.Restart()
	require.Equal(t, int64(0), srv.Client().Exists(ctx, "k").Val())
}

func TestAOFSurvivesKill(t *testing.T) {
	t.Parallel()
	srv := Start(t, AOF("always"))
	ctx := t.Context()
	require.NoError(t, srv.Client().Set(ctx, "k", "kept", 0).Err())
	srv.Kill()
	srv.Restart()
	require.Equal(t, "kept", srv.Client().Get(ctx, "k").Val())
}

func TestDirReopensData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	first := Start(t, AOF("always"), Dir(dir))
	require.NoError(t, first.Client().Set(ctx, "k", "v", 0).Err())
	first.Kill()

	second := Start(t, AOF("always"), Dir(dir))
	require.Equal(t, "v", second.Client().Get(ctx, "k").Val())
}

func TestTCPAndConfig(t *testing.T) {
	t.Parallel()
	srv := Start(t, TCP(), MaxMemory("3mb", "noeviction"), Config("hash-max-listpack-value 100"))
	ctx := t.Context()
	require.True(t, strings.HasPrefix(srv.URL(), "redis://127.0.0.1:"), srv.URL())
	require.NotEqual(t, "redis://127.0.0.1:6379", srv.URL())
	cfg, err := srv.Client().ConfigGet(ctx, "*").Result()
	require.NoError(t, err)
	require.Equal(t, "noeviction", cfg["maxmemory-policy"])
	require.Equal(t, fmt.Sprint(3<<20), cfg["maxmemory"])
	require.Equal(t, "100", cfg["hash-max-listpack-value"])
	srv.Restart() // same port
	require.NoError(t, srv.Client().Ping(ctx).Err())
}

func TestClusterEnforcesSlots(t *testing.T) {
	t.Parallel()
	srv := Start(t, Cluster())
	ctx := t.Context()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})
	defer c.Close()
	require.NoError(t, c.MSet(ctx, "{a}:1", "x", "{a}:2", "y").Err())
	err := srv.Client().MSet(ctx, "a1", "x", "b2", "y").Err()
	require.ErrorContains(t, err, "CROSSSLOT")
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	master := Start(t, TCP())
	sentinel := Start(t, Sentinel("mymaster", master))
	addr, err := sentinel.Client().Do(t.Context(), "SENTINEL", "get-master-addr-by-name", "mymaster").StringSlice()
	require.NoError(t, err)
	require.Equal(t, master.Addr(), addr[0]+":"+addr[1])
}

// fatalTB records the message of Fatal/Fatalf and ends the goroutine, as
// testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper()        {}
func (f *fatalTB) Cleanup(func()) {}
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(tb)
	}()
	<-done
	require.Equal(t, "redis-server not found: install it with `apt-get install redis-server` (Debian)", tb.msg)
}

// TestTLSPort: the TLS port speaks TLS with the CA's certificate and, with
// authClients, admits only a client certificate of that CA.
func TestTLSPort(t *testing.T) {
	t.Parallel()
	ca := authtest.NewCA(t, "test CA")
	for _, authClients := range []bool{false, true} {
		srv := Start(t, TLS(ca, authClients))
		require.NoError(t, srv.Client().Ping(t.Context()).Err(), "the plain port still answers")
		o, err := redis.ParseURL(srv.TLSURL())
		require.NoError(t, err)
		o.TLSConfig.RootCAs, o.MaxRetries = ca.Pool(), -1
		anon := redis.NewClient(o)
		err = anon.Ping(t.Context()).Err()
		anon.Close()
		if authClients {
			require.ErrorContains(t, err, "certificate required")
		} else {
			require.NoError(t, err)
		}
		o.TLSConfig.Certificates = []tls.Certificate{ca.Issue(t, authtest.Leaf{CommonName: "c"}).TLS}
		known := redis.NewClient(o)
		require.NoError(t, known.Ping(t.Context()).Err())
		known.Close()
	}
}
