package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// TestEvictionGuard: Open refuses a Redis that may evict keys, saying why
// and what to change, unless eviction is explicitly allowed; then it warns.
func TestEvictionGuard(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"allkeys-lru", "volatile-ttl"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			srv := testredis.Start(t, testredis.MaxMemory("64mb", policy))
			_, err := Open(t.Context(), srv.URL(), Options{})
			require.ErrorIs(t, err, ErrEvictionPolicy)
			require.ErrorContains(t, err, "maxmemory-policy is "+policy)
			require.ErrorContains(t, err, "set maxmemory-policy noeviction")
			if strings.HasPrefix(policy, "volatile-") {
				require.ErrorContains(t, err, "retryd sets none")
			}

			s, err := Open(t.Context(), srv.URL(), Options{AllowEviction: true})
			require.NoError(t, err)
			defer s.Close()
			info := s.ServerInfo()
			require.Equal(t, policy, info.MaxmemoryPolicy)
			require.Equal(t, int64(64<<20), info.Maxmemory)
			require.Len(t, info.Warnings, 1)
			require.Contains(t, info.Warnings[0], "allowed by configuration")
		})
	}
}

// TestInspectFallbacks: where CONFIG is renamed away (managed services) or
// not permitted to the ACL user, the policy is read from INFO and the guard
// still applies; where INFO is gone too, Open warns that it could not check.
func TestInspectFallbacks(t *testing.T) {
	t.Parallel()
	t.Run("ConfigRenamed", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t, testredis.Config(`rename-command CONFIG ""`))
		s, err := Open(t.Context(), srv.URL(), Options{})
		require.NoError(t, err)
		defer s.Close()
		info := s.ServerInfo()
		require.Equal(t, "INFO", info.Source)
		require.Equal(t, "noeviction", info.MaxmemoryPolicy)
		require.Equal(t, "no", info.AppendOnly)
		require.Len(t, info.Warnings, 1)
		require.Contains(t, info.Warnings[0], "CONFIG GET was refused")
	})
	t.Run("ConfigRenamedEvicting", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t, testredis.MaxMemory("64mb", "allkeys-random"), testredis.Config(`rename-command CONFIG ""`))
		_, err := Open(t.Context(), srv.URL(), Options{})
		require.ErrorIs(t, err, ErrEvictionPolicy, "INFO shows the policy: the guard holds without CONFIG")
	})
	t.Run("ACLWithoutConfig", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t, testredis.Config("user retryd on >s3cret ~* &* +@all -config"))
		s, err := Open(t.Context(), strings.Replace(srv.URL(), "unix://", "unix://retryd:s3cret@", 1), Options{})
		require.NoError(t, err)
		defer s.Close()
		require.Equal(t, "INFO", s.ServerInfo().Source)
		require.Equal(t, "noeviction", s.ServerInfo().MaxmemoryPolicy)
	})
	t.Run("ConfigAndInfoRenamed", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t, testredis.Config(`rename-command CONFIG ""`, `rename-command INFO ""`))
		s, err := Open(t.Context(), srv.URL(), Options{})
		require.NoError(t, err)
		defer s.Close()
		info := s.ServerInfo()
		require.Empty(t, info.MaxmemoryPolicy)
		require.Contains(t, strings.Join(info.Warnings, "\n"), "could not read maxmemory-policy")
		require.Contains(t, info.LossWindow(), "unknown")
	})
}

// TestServerInfoPersistence: Open reads the persistence settings, and the
// loss window it states follows them.
func TestServerInfoPersistence(t *testing.T) {
	t.Parallel()
	cases := []struct {
		opts []testredis.Option
		want ServerInfo
		loss string
	}{
		{nil, ServerInfo{AppendOnly: "no", Save: "", SaveKnown: true}, "everything"},
		{[]testredis.Option{testredis.Config("save 900 1")}, ServerInfo{AppendOnly: "no", Save: "900 1", SaveKnown: true}, "since the last RDB snapshot"},
		{[]testredis.Option{testredis.AOF("everysec")}, ServerInfo{AppendOnly: "yes", AppendFsync: "everysec", SaveKnown: true}, "about the last second"},
		{[]testredis.Option{testredis.AOF("always")}, ServerInfo{AppendOnly: "yes", AppendFsync: "always", SaveKnown: true}, "none"},
		{[]testredis.Option{testredis.AOF("no")}, ServerInfo{AppendOnly: "yes", AppendFsync: "no", SaveKnown: true}, "kernel"},
	}
	for _, c := range cases {
		t.Run(c.loss, func(t *testing.T) {
			t.Parallel()
			srv := testredis.Start(t, c.opts...)
			s, err := Open(t.Context(), srv.URL(), Options{})
			require.NoError(t, err)
			defer s.Close()
			info := s.ServerInfo()
			require.Equal(t, "CONFIG GET", info.Source)
			require.Equal(t, "noeviction", info.MaxmemoryPolicy)
			require.NotEmpty(t, info.Version)
			require.Equal(t, 0, info.ConnectedReplicas)
			require.Empty(t, info.Warnings)
			require.Equal(t, c.want.AppendOnly, info.AppendOnly)
			if c.want.AppendFsync != "" {
				require.Equal(t, c.want.AppendFsync, info.AppendFsync)
			}
			if c.want.AppendOnly == "no" {
				require.Equal(t, c.want.Save, info.Save)
			}
			require.Contains(t, info.LossWindow(), c.loss)
		})
	}
}

// TestOutOfMemoryNeverAcknowledges: a Redis at its maxmemory (noeviction)
// refuses the writes; every report it refused fails with ErrUnavailable and
// left nothing behind, and every report acknowledged before is whole.
func TestOutOfMemoryNeverAcknowledges(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t, testredis.MaxMemory("3mb", "noeviction"))
	s, err := Open(t.Context(), srv.URL(), Options{})
	require.NoError(t, err)
	defer s.Close()
	ctx := t.Context()
	payload := []byte(`{"blob":"` + strings.Repeat("x", 16<<10) + `"}`)
	var acked, refused []string
	for i := 0; len(refused) < 20; i++ {
		require.Less(t, i, 2000, "Redis never ran out of memory")
		f := firstFailure()
		f.JobID = fmt.Sprintf("job-%d", i)
		f.Payload = payload
		_, err := s.RecordFailure(ctx, f)
		switch {
		case err == nil:
			acked = append(acked, f.JobID)
		default:
			require.ErrorIs(t, err, store.ErrUnavailable, "an out-of-memory refusal is UNAVAILABLE, never an internal error")
			require.ErrorContains(t, err, "OOM")
			refused = append(refused, f.JobID)
		}
	}
	require.NotEmpty(t, acked)
	for _, id := range acked {
		j, err := s.GetJob(ctx, id)
		require.NoError(t, err)
		require.Len(t, j.Attempts, 1)
		require.Equal(t, payload, j.Attempts[0].Payload)
	}
	for _, id := range refused {
		_, err := s.GetJob(ctx, id)
		require.ErrorIs(t, err, store.ErrNotFound, "a refused report left %s behind", id)
	}
	// Other changes are either refused (ErrUnavailable, nothing changed) or
	// applied: Redis lets a script that starts by deleting (a claim takes
	// the task out of the due set first) finish past maxmemory, and then
	// its answer is true. Never an OK for a change that was not made.
	_, err = s.RecordSuccess(ctx, store.Success{JobID: "new-success", Phase: "extraction", Payload: payload, Now: t0})
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = s.GetJob(ctx, "new-success")
	require.ErrorIs(t, err, store.ErrNotFound)
	tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 10, Now: t0.Add(time.Hour), LeaseFor: time.Minute})
	if err != nil {
		require.ErrorIs(t, err, store.ErrUnavailable)
	}
	for _, task := range tasks {
		j, err := s.GetJob(ctx, task.JobID)
		require.NoError(t, err)
		require.Equal(t, task.LeaseID, j.LeaseID, "a claim answered OK is applied")
	}
	canceled, err := s.CancelJob(ctx, acked[len(acked)-1], "operator", t0)
	j, getErr := s.GetJob(ctx, acked[len(acked)-1])
	require.NoError(t, getErr)
	if err != nil {
		require.ErrorIs(t, err, store.ErrUnavailable)
		require.Equal(t, store.StateProcessing, j.State, "a refused cancel changed nothing")
	} else {
		require.Equal(t, store.StateCanceled, canceled.State)
		require.Equal(t, store.StateCanceled, j.State, "a cancel answered OK is applied")
	}
}

// replicated starts a primary and a replica of it and waits until the
// replica is in sync.
func replicated(t *testing.T) (primary, replica *testredis.Server) {
	t.Helper()
	// No diskless-sync delay: the replica syncs at once, not after 5 s.
	primary = testredis.Start(t, testredis.TCP(), testredis.Config("repl-diskless-sync-delay 0"))
	replica = testredis.Start(t, testredis.TCP(), testredis.Config("replicaof "+strings.Replace(primary.Addr(), ":", " ", 1)))
	waitReplicaLink(t, primary, 1)
	return primary, replica
}

// waitReplicaLink waits until the primary counts n replicas online.
func waitReplicaLink(t *testing.T, primary *testredis.Server, n int) {
	t.Helper()
	want := fmt.Sprintf("connected_slaves:%d", n)
	require.Eventually(t, func() bool {
		info, err := primary.Client().Info(context.Background(), "replication").Result()
		return err == nil && strings.Contains(info, want) && (n == 0 || strings.Contains(info, "state=online"))
	}, 10*time.Second, 5*time.Millisecond, "the primary never had %d replicas online", n)
}

// TestReplicaRefused: Open refuses a replica (every write would fail with
// READONLY) and says what to point at instead.
func TestReplicaRefused(t *testing.T) {
	t.Parallel()
	_, replica := replicated(t)
	_, err := Open(t.Context(), replica.URL(), Options{})
	require.ErrorContains(t, err, "read-only replica")
	require.ErrorContains(t, err, "redis+sentinel://")
}

// TestStrictDurability: with DurabilityStrict a report is acknowledged only
// once the replica holds it; with the replica gone the report fails with
// ErrUnavailable (applied on the primary, not acknowledged), and its repeat
// once the replica is back waits again before it is acknowledged.
func TestStrictDurability(t *testing.T) {
	t.Parallel()
	primary, replica := replicated(t)
	// A generous wait while the replica is up (the machine may be loaded),
	// a short one for the reports that must fail.
	s, err := Open(t.Context(), primary.URL(), Options{Prefix: "t", Durability: DurabilityStrict, WaitTimeout: 10 * time.Second})
	require.NoError(t, err)
	defer s.Close()
	short, err := Open(t.Context(), primary.URL(), Options{Prefix: "t", Durability: DurabilityStrict, WaitTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	defer short.Close()
	require.Equal(t, 1, s.ServerInfo().ConnectedReplicas)
	require.Empty(t, s.ServerInfo().Warnings)
	ctx := t.Context()
	onReplica := func(id string) bool {
		return replica.Client().Exists(ctx, "{t}:j:"+id).Val() == 1
	}

	for i := range 20 {
		f := firstFailure()
		f.JobID = fmt.Sprintf("job-%d", i)
		_, err := s.RecordFailure(ctx, f)
		require.NoError(t, err)
		require.True(t, onReplica(f.JobID), "%s was acknowledged before the replica had it", f.JobID)
	}
	task, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, Now: t0.Add(time.Hour), LeaseFor: time.Minute, WorkerID: "w"})
	require.NoError(t, err)
	require.Len(t, task, 1)
	_, err = s.ExtendLease(ctx, task[0].JobID, task[0].LeaseID, t0.Add(2*time.Hour), t0.Add(time.Hour))
	require.NoError(t, err)

	replica.Kill()
	lost := firstFailure()
	lost.JobID = "during-outage"
	began := time.Now()
	_, err = short.RecordFailure(ctx, lost)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "0 of 1 replicas confirmed the change within 200ms")
	require.GreaterOrEqual(t, time.Since(began), 200*time.Millisecond, "the report waited for the replica")
	require.Equal(t, int64(1), primary.Client().Exists(ctx, "{t}:j:during-outage").Val(), "applied on the primary")
	_, err = short.RecordSuccess(ctx, store.Success{JobID: "success-during-outage", Phase: "extraction", Now: t0})
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = short.CancelJob(ctx, "job-3", "operator", t0)
	require.ErrorIs(t, err, store.ErrUnavailable)

	replica.Restart()
	waitReplicaLink(t, primary, 1)
	res, err := s.RecordFailure(ctx, lost)
	require.NoError(t, err, "the repeat is acknowledged once the replica confirms")
	require.True(t, res.Duplicate)
	require.True(t, onReplica("during-outage"))
}

// TestStrictDurabilityChecks: strict durability warns when Redis has fewer
// replicas than it waits for, and is refused on Redis Cluster.
func TestStrictDurabilityChecks(t *testing.T) {
	t.Parallel()
	t.Run("TooFewReplicas", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t)
		s, err := Open(t.Context(), srv.URL(), Options{Durability: DurabilityStrict, WaitReplicas: 2, WaitTimeout: 10 * time.Millisecond})
		require.NoError(t, err)
		defer s.Close()
		require.Contains(t, strings.Join(s.ServerInfo().Warnings, "\n"), "waits for 2 replicas but Redis has 0 connected")
		_, err = s.RecordFailure(t.Context(), firstFailure())
		require.ErrorIs(t, err, store.ErrUnavailable)
	})
	t.Run("Cluster", func(t *testing.T) {
		t.Parallel()
		srv := testredis.Start(t, testredis.Cluster())
		_, err := Open(t.Context(), "redis+cluster://"+srv.Addr(), Options{Durability: DurabilityStrict})
		require.ErrorContains(t, err, "not supported on Redis Cluster")
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})
		defer c.Close()
		require.Panics(t, func() { New(c, Options{Durability: DurabilityStrict}) })
	})
	t.Run("BadOptions", func(t *testing.T) {
		t.Parallel()
		for _, o := range []Options{{Durability: "sometimes"}, {WaitReplicas: -1}, {WaitTimeout: time.Microsecond}} {
			_, err := o.withDefaults()
			require.Error(t, err, "%+v", o)
		}
	})
}

// TestStrictDurabilityShared: concurrent reports under strict durability
// share WAITs (one round answers every change that joined it), and each is
// acknowledged only once the replica holds it.
func TestStrictDurabilityShared(t *testing.T) {
	t.Parallel()
	primary, replica := replicated(t)
	s, err := Open(t.Context(), primary.URL(), Options{Prefix: "t", Durability: DurabilityStrict, WaitTimeout: 10 * time.Second})
	require.NoError(t, err)
	defer s.Close()
	ctx := t.Context()
	waits := func() int64 { return commandCalls(t, primary.Client(), "wait") }
	before := waits()
	const n = 60
	var wg sync.WaitGroup
	errs := make([]error, n)
	acked := make([]bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := firstFailure()
			f.JobID = fmt.Sprintf("shared-%d", i)
			if _, errs[i] = s.RecordFailure(ctx, f); errs[i] == nil {
				acked[i] = replica.Client().Exists(ctx, "{t}:j:"+f.JobID).Val() == 1
			}
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "report %d", i)
		require.True(t, acked[i], "report %d was acknowledged before the replica had it", i)
	}
	rounds := waits() - before
	t.Logf("%d strict reports, %d WAITs", n, rounds)
	require.Less(t, rounds, int64(n), "concurrent reports share WAITs")
}
