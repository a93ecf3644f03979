package fault_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// TestEvictionPolicyRefusedAtStart: retryd will not start on a Redis that
// may evict its keys, and says why and what to do; told to accept the
// risk, it starts and warns.
func TestEvictionPolicyRefusedAtStart(t *testing.T) {
	srv := testredis.Start(t, testredis.MaxMemory("64mb", "allkeys-lru"))
	p := launch(t, "A", nil, replicaArgs(srv.URL())...)
	p.waitExit(t, 20*time.Second)
	var exit interface{ ExitCode() int }
	require.True(t, errors.As(p.exitErr, &exit), "retryd exited with %v", p.exitErr)
	require.Equal(t, 1, exit.ExitCode())
	logs := p.logs.String()
	for _, want := range []string{
		"maxmemory-policy is allkeys-lru",
		"a deleted key is a silently lost retry",
		"set maxmemory-policy noeviction",
		"--redis-allow-eviction",
	} {
		require.Contains(t, logs, want)
	}

	p = startProc(t, "B", nil, replicaArgs(srv.URL(), "--redis-allow-eviction")...)
	p.waitLog(t, "level=WARN", "maxmemory-policy is allkeys-lru", "allowed by configuration")
}

// TestOutOfMemoryUnderLoad: Redis at its maxmemory (noeviction) under load.
// Reports it cannot take are answered UNAVAILABLE — never OK, never another
// error — and left nothing behind; every acknowledged report is whole; the
// replica does not spin.
func TestOutOfMemoryUnderLoad(t *testing.T) {
	srv := testredis.Start(t, testredis.MaxMemory("5mb", "noeviction"))
	st := openStore(t, srv)
	procs := startReplicas(t, []string{"A", "B"}, srv.URL(), nil)
	cfg := withPrefix(outageLoad, "oom")
	cfg.lease = 2 * time.Second
	cfg.padding = 16 << 10 // fills the 5 MB in a few hundred reports
	l := startLoad(t, cfg, procs)

	// Wait for the first refusals, then keep the load on a full Redis.
	deadline := time.Now().Add(60 * time.Second)
	var full time.Time
	for full.IsZero() {
		require.True(t, time.Now().Before(deadline), "Redis never filled up")
		l.ledger.mu.Lock()
		for _, r := range l.ledger.rpcs {
			if r.code == codes.Unavailable {
				full = r.end
				break
			}
		}
		l.ledger.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	from := time.Now()
	cpuFrom := map[string]time.Duration{}
	for _, p := range procs {
		cpuFrom[p.name] = p.cpuTime(t)
	}
	time.Sleep(2 * time.Second)
	window := time.Since(from)
	for _, p := range procs {
		cpu := p.cpuTime(t) - cpuFrom[p.name]
		t.Logf("%s with Redis out of memory: %.0f%% of a core, %.1f log lines/s", p.name,
			100*cpu.Seconds()/window.Seconds(), float64(p.logs.count(from, from.Add(window), ""))/window.Seconds())
		require.Less(t, cpu.Seconds()/window.Seconds(), 0.5, "%s spins on a full Redis", p.name)
		p.waitLog(t, "OOM command not allowed")
	}
	l.stop()

	l.requireClean(t, st)
	checkConservation(t, st, l.ledger)
	// Every answer was OK or UNAVAILABLE, and a first report that was
	// never acknowledged left no job behind (Redis refuses a script at its
	// first write, so a refused report changed nothing).
	l.ledger.mu.Lock()
	defer l.ledger.mu.Unlock()
	refused := 0
	for _, r := range l.ledger.rpcs {
		require.Contains(t, []codes.Code{codes.OK, codes.Unavailable}, r.code)
		if r.code == codes.Unavailable {
			refused++
		}
	}
	orphans := 0
	for id := range l.ledger.attempted {
		if _, ok := l.ledger.acked[id]; ok {
			continue
		}
		_, err := st.GetJob(context.Background(), id)
		require.ErrorIs(t, err, store.ErrNotFound, "the unacknowledged report of %s left it in Redis", id)
		orphans++
	}
	info, err := srv.Client().Info(context.Background(), "memory").Result()
	require.NoError(t, err)
	used := ""
	for _, line := range strings.Split(info, "\r\n") {
		if strings.HasPrefix(line, "used_memory_human:") {
			used = strings.TrimPrefix(line, "used_memory_human:")
		}
	}
	t.Logf("Redis full (maxmemory 5mb, used %s): %d reports acknowledged, %d calls answered UNAVAILABLE, %d unacknowledged first reports left nothing behind",
		used, len(l.ledger.acked), refused, orphans)
	require.Positive(t, refused)
}
