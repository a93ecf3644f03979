package redisstore

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/storetest"
)

// replica opens a second store on the harness's Redis and prefix, with its
// own connections, as another retryd process would.
func (h *harness) replica() *Store {
	h.t.Helper()
	s, err := Open(h.ctx, h.srv.URL(), Options{Prefix: "t"})
	require.NoError(h.t, err)
	h.t.Cleanup(func() { require.NoError(h.t, s.Close()) })
	return s
}

// TestReplicasShareOneReport: the same report sent 20 times at once, half
// through each of two replicas, schedules exactly one retry.
func TestReplicasShareOneReport(t *testing.T) {
	h := setup(t)
	stores := []*Store{h.s, h.replica()}
	var (
		wg      sync.WaitGroup
		applied atomic.Int32
		errs    = make(chan error, 20)
	)
	for i := range 20 {
		wg.Go(func() {
			f := firstFailure()
			f.Verdict.Delay += time.Duration(i) * time.Millisecond // whose verdict won shows
			f.Verdict.DueAt = t0.Add(f.Verdict.Delay)
			res, err := stores[i%2].RecordFailure(h.ctx, f)
			if err != nil {
				errs <- err
				return
			}
			if !res.Duplicate {
				applied.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int32(1), applied.Load(), "exactly one report applies")
	j, err := h.s.GetJob(h.ctx, "job-1")
	require.NoError(t, err)
	require.Len(t, j.Attempts, 1)
	due, err := h.rdb.ZRangeWithScores(h.ctx, "{t}:due:extraction", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, due, 1, "one retry in the due index")
	require.Equal(t, float64(store.DueMicros(j.DueAt)), due[0].Score)
	require.Equal(t, "1", h.rdb.HGet(h.ctx, statsHour0, "r0"+fld("extraction")+"requests.exceptions.ConnectionError").Val(),
		"the attempt is counted once")
}

// TestReplicasNeverClaimOneTaskTwice: claimers on two replicas drain 60 due
// retries; each is leased exactly once.
func TestReplicasNeverClaimOneTaskTwice(t *testing.T) {
	h := setup(t)
	stores := []*Store{h.s, h.replica()}
	const jobs = 60
	for i := range jobs {
		f := firstFailure()
		f.JobID = fmt.Sprintf("job-%02d", i)
		f.Verdict.DueAt = t0.Add(time.Duration(i%5) * time.Second)
		_, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err)
	}
	var (
		mu      sync.Mutex
		claimed = map[string]int{}
		wg      sync.WaitGroup
		errs    []error
	)
	for w := range 6 {
		wg.Go(func() {
			for {
				tasks, err := stores[w%2].Claim(h.ctx, store.ClaimRequest{
					Phases: []string{"extraction"}, Limit: 4, Now: t0.Add(time.Minute), LeaseFor: time.Minute, WorkerID: fmt.Sprint("w", w),
				})
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				}
				for _, task := range tasks {
					claimed[task.JobID]++
				}
				mu.Unlock()
				if err != nil || len(tasks) == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	require.Empty(t, errs)
	require.Len(t, claimed, jobs)
	for id, n := range claimed {
		require.Equal(t, 1, n, "%s claimed %d times", id, n)
	}
	require.Equal(t, int64(jobs), h.rdb.ZCard(h.ctx, "{t}:leases").Val())
}

// TestSubscribeSeesOtherReplicas: the point of the events channel is that a
// replica's dispatcher wakes up for another replica's schedule.
func TestSubscribeSeesOtherReplicas(t *testing.T) {
	h := setup(t)
	other := h.replica()
	ch, err := h.s.Subscribe(h.ctx)
	require.NoError(t, err)
	_, err = other.RecordFailure(h.ctx, firstFailure())
	require.NoError(t, err)
	requireEvent(t, ch, store.Event{Kind: store.EventScheduled, Phase: "extraction", DueAt: t0.Add(time.Minute)})

	tasks, err := other.Claim(h.ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, Now: t0.Add(time.Minute), LeaseFor: time.Minute})
	require.NoError(t, err)
	require.NoError(t, other.ReturnLease(h.ctx, "job-1", tasks[0].LeaseID))
	requireEvent(t, ch, store.Event{Kind: store.EventLeaseReleased, LeaseID: tasks[0].LeaseID})
	requireEvent(t, ch, store.Event{Kind: store.EventScheduled, Phase: "extraction", DueAt: t0.Add(time.Minute)})
}

// TestSubscribeSurvivesRestart: after Redis comes back, events flow again
// on the same channel (go-redis resubscribes).
func TestSubscribeSurvivesRestart(t *testing.T) {
	h := setup(t)
	ch, err := h.s.Subscribe(h.ctx)
	require.NoError(t, err)
	h.srv.Kill()
	h.srv.Restart()
	// Events published before the resubscription are lost (they are
	// hints); keep publishing until one arrives.
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		f := firstFailure()
		f.JobID = fmt.Sprint("job-", i)
		_, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err)
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "the channel must stay open across a reconnect")
			require.Equal(t, store.EventScheduled, ev.Kind)
			return
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("no event after the restart")
		}
	}
}

func TestSubscribeEnds(t *testing.T) {
	h := setup(t)
	ctx, cancel := context.WithCancel(h.ctx)
	byCtx, err := h.s.Subscribe(ctx)
	require.NoError(t, err)
	byClose, err := h.s.Subscribe(h.ctx)
	require.NoError(t, err)
	cancel()
	requireClosed(t, byCtx)
	require.NoError(t, h.s.Close())
	requireClosed(t, byClose)
	require.NoError(t, h.s.Close(), "Close is idempotent")
	_, err = h.s.Subscribe(h.ctx)
	require.Error(t, err, "Subscribe after Close")
}

// TestUnavailable: a Redis that cannot be reached gives store.ErrUnavailable,
// never a success.
func TestUnavailable(t *testing.T) {
	h := setup(t)
	h.srv.Kill()
	ctx, cancel := context.WithTimeout(h.ctx, 300*time.Millisecond)
	defer cancel()
	_, err := h.s.RecordFailure(ctx, firstFailure())
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = h.s.RecordSuccess(ctx, store.Success{JobID: "job-1", Phase: "extraction", Now: t0})
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = h.s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, Now: t0})
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = h.s.GetJob(ctx, "job-1")
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorIs(t, h.s.Ping(ctx), store.ErrUnavailable)

	_, err = Open(ctx, h.srv.URL(), Options{})
	require.ErrorIs(t, err, store.ErrUnavailable, "Open of a Redis that does not answer")
}

// TestOutOfMemoryChangesNothing: a Redis at maxmemory with noeviction
// refuses a script's first write that could grow memory (and, to keep
// scripts atomic, only the first): ErrUnavailable, and nothing was written.
func TestOutOfMemoryChangesNothing(t *testing.T) {
	h := setup(t, testredis.MaxMemory("0", "noeviction"))
	h.seed(scheduledState())
	before := h.dump()
	require.NoError(t, h.rdb.ConfigSet(h.ctx, "maxmemory", "1").Err())
	f := firstFailure()
	f.JobID = "job-2"
	_, err := h.s.RecordFailure(h.ctx, f)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "OOM")
	require.NoError(t, h.rdb.ConfigSet(h.ctx, "maxmemory", "0").Err())
	h.requireState(before, "refused writes")
}

// TestHostileValuesRoundTrip: ids, phases, messages, labels and payloads
// full of Lua, SQL, braces and invalid UTF-8 are stored as data: they come
// back byte for byte, and the keys they name keep the store's hash tag.
func TestHostileValuesRoundTrip(t *testing.T) {
	h := setup(t)
	hostile := []string{
		"]] .. redis.call('FLUSHALL') .. [[", `'); DROP TABLE jobs; --`, "{x}", "}{", "a:b:c",
		"line\nbreak\r\n", "nul\x00", "bad utf-8 \xff\xfe\xc3\x28", "%s %d", "1:2:3:",
	}
	for i, s := range hostile {
		f := firstFailure()
		f.JobID, f.Phase = s, s
		f.ErrorType, f.ErrorMessage, f.Verdict.Reason = s, s, s
		f.Labels = map[string]string{s: s}
		f.Payload = []byte(s)
		f.Now = t0.Add(time.Duration(i) * time.Second)
		f.Verdict.DueAt = f.Now
		_, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err, "report %q", s)
		tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{Phases: []string{s}, Limit: 5, Now: f.Now, LeaseFor: time.Minute, WorkerID: s})
		require.NoError(t, err)
		require.Len(t, tasks, 1, "claim of phase %q", s)
		require.Equal(t, s, tasks[0].JobID)
		require.Equal(t, []byte(s), tasks[0].Payload)
		require.Equal(t, f.Labels, tasks[0].Labels)
		g := f
		g.RetryCount, g.LeaseID, g.Payload, g.Labels = 1, tasks[0].LeaseID, nil, nil
		g.Verdict = store.Verdict{Decision: store.DecisionGiveUp, Reason: s}
		_, err = h.s.RecordFailure(h.ctx, g)
		require.NoError(t, err)
		res, err := h.s.RecordFailure(h.ctx, g)
		require.NoError(t, err)
		require.Equal(t, store.FailureResult{Verdict: g.Verdict, Duplicate: true}, res)

		j, err := h.s.GetJob(h.ctx, s)
		require.NoError(t, err)
		require.Equal(t, s, j.Phase)
		require.Equal(t, s, j.FinalError)
		require.Equal(t, s, j.LastErrorType)
		require.Len(t, j.Attempts, 2)
		require.Equal(t, s, j.Attempts[1].WorkerID)
		require.Equal(t, []byte(s), j.Attempts[1].Payload)
	}
	keys, err := h.rdb.Keys(h.ctx, "*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		require.True(t, strings.HasPrefix(k, "{t}:"), "key %q escapes the hash tag", k)
	}
	stats, err := h.s.Stats(h.ctx, store.StatsQuery{Since: t0, Until: t0.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, stats, len(hostile))
	for _, ps := range stats {
		require.Equal(t, map[string]uint64{ps.Phase: 2}, ps.FailuresByType)
	}
}

// TestConformanceOnCluster runs the shared suite through a Redis Cluster
// client against a one-node cluster, which refuses any script or command
// whose keys span two hash slots (CROSSSLOT): every scenario then proves
// invariant 4 for every script it runs.
func TestConformanceOnCluster(t *testing.T) {
	srv := testredis.Start(t, testredis.Cluster())
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, opts storetest.Options) store.Store {
		s, err := Open(t.Context(), "redis+cluster://"+srv.Addr(), Options{
			Prefix:          fmt.Sprintf("cluster-%d", n.Add(1)),
			JobRetention:    opts.JobRetention,
			StatsRetention:  opts.StatsRetention,
			MaxTerminalJobs: opts.MaxTerminalJobs,
		})
		require.NoError(t, err)
		_, isCluster := s.client.(*redis.ClusterClient)
		require.True(t, isCluster)
		return s
	})
}

// TestSentinel opens the store through a Sentinel that monitors a master.
func TestSentinel(t *testing.T) {
	t.Parallel()
	master := testredis.Start(t, testredis.TCP())
	sentinel := testredis.Start(t, testredis.Sentinel("retryd-master", master))
	s, err := Open(t.Context(), "redis+sentinel://"+sentinel.Addr()+"/retryd-master/0", Options{})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.RecordFailure(t.Context(), firstFailure())
	require.NoError(t, err)
	require.Equal(t, int64(1), master.Client().Exists(t.Context(), "{retryd}:j:job-1").Val(),
		"the write went to the master the sentinel named")
}

func TestOptions(t *testing.T) {
	t.Parallel()
	o, err := Options{}.withDefaults()
	require.NoError(t, err)
	require.Equal(t, Options{
		Prefix: "retryd", JobRetention: store.DefaultJobRetention, StatsRetention: store.DefaultStatsRetention,
		MaxTerminalJobs: store.DefaultMaxTerminalJobs, ExpireLimit: 1000, EventBuffer: 256,
		Durability: DurabilityAsync, WaitReplicas: 1, WaitTimeout: time.Second,
	}, o)
	for _, bad := range []Options{
		{Prefix: "a{b"}, {Prefix: "}"}, {JobRetention: -1}, {StatsRetention: -time.Hour}, {ExpireLimit: -1}, {EventBuffer: -1},
		{MaxTerminalJobs: -2},
	} {
		_, err := bad.withDefaults()
		require.Error(t, err, "%+v", bad)
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	require.Panics(t, func() { New(c, Options{Prefix: "{x}"}) })
	_, err = Open(t.Context(), "redis://127.0.0.1:1", Options{Prefix: "{x}"})
	require.ErrorContains(t, err, "Options.Prefix")
}

func TestNewDoesNotOwnClient(t *testing.T) {
	h := setup(t)
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: h.srv.Addr()})
	defer c.Close()
	s := New(c, Options{Prefix: "t"})
	require.NoError(t, s.Ping(h.ctx))
	require.NoError(t, s.Close())
	require.NoError(t, c.Ping(h.ctx).Err(), "the caller's client stays open")
}

func TestBacklog(t *testing.T) {
	h := setup(t)
	h.seed(leasedState())
	f := firstFailure()
	for _, id := range []string{"a", "b"} {
		f.JobID = id
		_, err := h.s.RecordFailure(h.ctx, f)
		require.NoError(t, err)
	}
	f.JobID, f.Phase = "c", "chunking"
	_, err := h.s.RecordFailure(h.ctx, f)
	require.NoError(t, err)
	got, err := h.s.Backlog(h.ctx)
	require.NoError(t, err)
	counts := map[string]int64{}
	for ph, b := range got {
		counts[ph] = b.Scheduled
	}
	require.Equal(t, map[string]int64{"extraction": 2, "chunking": 1}, counts, "leased attempts are not backlog")
}

func requireEvent(t *testing.T, ch <-chan store.Event, want store.Event) {
	t.Helper()
	select {
	case got := <-ch:
		require.Equal(t, want.Kind, got.Kind)
		require.Equal(t, want.Phase, got.Phase)
		require.Equal(t, want.LeaseID, got.LeaseID)
		require.True(t, want.DueAt.Equal(got.DueAt), "DueAt %v, want %v", got.DueAt, want.DueAt)
	case <-time.After(5 * time.Second):
		t.Fatalf("no event %+v", want)
	}
}

func requireClosed(t *testing.T, ch <-chan store.Event) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("the event channel was not closed")
		}
	}
}

// TestCorruptDataIsNotUnavailable: a value the store cannot decode is an
// internal error, not store.ErrUnavailable (a retry would not help).
func TestCorruptDataIsNotUnavailable(t *testing.T) {
	h := setup(t)
	h.seed(scheduledState())
	require.NoError(t, h.rdb.HSet(h.ctx, "{t}:j:job-1", "pd", "garbage").Err())
	_, err := h.s.GetJob(h.ctx, "job-1")
	require.Error(t, err)
	require.NotErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "corrupt data")
}

// TestPingRefusesWhenRedisRefusesWrites: a Redis that answers PING but
// refuses writes — full under noeviction (OOM), or a replica (READONLY) —
// fails Ping with store.ErrUnavailable, so health goes NOT_SERVING, while
// Open still starts on it; Ping is fine again once Redis accepts writes.
func TestPingRefusesWhenRedisRefusesWrites(t *testing.T) {
	h := setup(t)
	require.NoError(t, h.s.Ping(h.ctx))

	require.NoError(t, h.rdb.ConfigSet(h.ctx, "maxmemory", "1").Err()) // below what Redis already uses
	err := h.s.Ping(h.ctx)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "OOM")
	require.NoError(t, h.rdb.Ping(h.ctx).Err(), "Redis itself still answers")
	opened, err := Open(h.ctx, h.srv.URL(), Options{Prefix: "t", AllowEviction: true})
	require.NoError(t, err, "a full Redis does not stop retryd from starting")
	require.ErrorIs(t, opened.Ping(h.ctx), store.ErrUnavailable)
	require.NoError(t, opened.Close())
	require.NoError(t, h.rdb.ConfigSet(h.ctx, "maxmemory", "0").Err())
	require.NoError(t, h.s.Ping(h.ctx))

	// A replica: read-only.
	host, port, err := net.SplitHostPort(testredis.Start(t, testredis.TCP()).Addr())
	require.NoError(t, err)
	require.NoError(t, h.rdb.ReplicaOf(h.ctx, host, port).Err())
	err = h.s.Ping(h.ctx)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "READONLY")
	require.NoError(t, h.rdb.ReplicaOf(h.ctx, "NO", "ONE").Err())
	require.NoError(t, h.s.Ping(h.ctx))
}
