package redisstore

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/auth/authtest"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
	"github.com/retryd/retryd/store/storetest"
)

// The least-privilege ACL user is documented in README.md ("Redis
// credentials and TLS") as an ACL SETUSER line, and a second one that adds
// what Redis Cluster needs. These tests run those very lines — so that the
// README cannot fall behind the commands the store sends — on throwaway
// servers, with the password and the key prefix replaced the way the
// README tells an operator to:
//
//	ACL SETUSER retryd on >PASSWORD resetkeys ~{retryd}:* resetchannels &{retryd}:events -@all +…
//	ACL SETUSER retryd +cluster|slots …
//
// and then run the store through that user.

// aclLines returns README.md's ACL SETUSER lines: the one creating the user
// (it holds >PASSWORD) and the Cluster addition.
func aclLines(t *testing.T) (user, cluster string) {
	t.Helper()
	f, err := os.Open("../../README.md")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "ACL SETUSER retryd ") {
			continue
		}
		switch {
		case strings.Contains(line, ">PASSWORD"):
			require.Empty(t, user, "README.md shows two ACL SETUSER lines with >PASSWORD")
			user = line
		case strings.Contains(line, "+cluster|"):
			require.Empty(t, cluster, "README.md shows two Cluster ACL lines")
			cluster = line
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, user, "README.md should show `ACL SETUSER retryd on >PASSWORD ...`")
	require.NotEmpty(t, cluster, "README.md should show the Cluster addition `ACL SETUSER retryd +cluster|...`")
	return user, cluster
}

// createACLUser runs the README's user line on srv with password and with
// the key prefix "retryd" replaced by prefixGlob (a glob over the prefixes
// the test's stores use), and returns the rules it ran.
func createACLUser(t *testing.T, srv *testredis.Server, password, prefixGlob string) []string {
	t.Helper()
	line, _ := aclLines(t)
	args := strings.Fields(line)
	cmd := make([]any, len(args))
	var rules []string
	for i, a := range args {
		switch {
		case a == ">PASSWORD":
			a = ">" + password
		case strings.Contains(a, "{retryd}"):
			a = strings.ReplaceAll(a, "{retryd}", "{"+prefixGlob+"}")
		}
		cmd[i] = a
		if i >= 3 {
			rules = append(rules, a)
		}
	}
	require.NoError(t, srv.Client().Do(t.Context(), cmd...).Err(), "README's ACL line")
	return rules
}

// runLine runs an ACL line as written.
func runLine(t *testing.T, srv *testredis.Server, line string) {
	t.Helper()
	var cmd []any
	for _, a := range strings.Fields(line) {
		cmd = append(cmd, a)
	}
	require.NoError(t, srv.Client().Do(t.Context(), cmd...).Err(), "README's ACL line %q", line)
}

func randomPassword(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// denials returns Redis's ACL LOG, for a failure message.
func denials(srv *testredis.Server) string {
	entries, err := srv.Client().Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%v\n", e)
	}
	return b.String()
}

// TestACLUserOverTLS runs the whole conformance suite as the README's ACL
// user over rediss:// (the URL form retryd reads: user and password in it),
// on a redis-server with a TLS port and throwaway certificates. Every
// command a store method sends, directly or from a script, is thus one
// the line permits.
func TestACLUserOverTLS(t *testing.T) {
	t.Parallel()
	// Redis asks for client certificates by default; retryd authenticates
	// with the ACL user's password here (TestClientCertificate: with one).
	ca := authtest.NewCA(t, "redis test CA")
	srv := testredis.Start(t, testredis.TLS(ca, false))
	password := randomPassword(t)
	createACLUser(t, srv, password, "acl-*")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ACL LOG:\n%s", denials(srv))
		}
	})

	url := strings.Replace(srv.TLSURL(), "rediss://", "rediss://retryd:"+password+"@", 1)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, opts storetest.Options) store.Store {
		// The test CA instead of the system's, as --redis-tls-ca gives it.
		client, err := NewClient(url, &ClientTLS{RootCAs: ca.Pool()})
		require.NoError(t, err)
		t.Cleanup(func() { client.Close() })
		s := New(client, Options{
			Prefix:          fmt.Sprintf("acl-%d", n.Add(1)),
			JobRetention:    opts.JobRetention,
			StatsRetention:  opts.StatsRetention,
			MaxTerminalJobs: opts.MaxTerminalJobs,
		})
		require.NoError(t, s.Ping(t.Context()))
		return s
	})

	// The TLS port speaks TLS only, and a wrong CA is refused.
	plain := redis.NewClient(&redis.Options{Addr: srv.TLSAddr(), Username: "retryd", Password: password,
		DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
	defer plain.Close()
	require.Error(t, plain.Ping(t.Context()).Err())
	o, err := redis.ParseURL(url)
	require.NoError(t, err)
	o.TLSConfig.RootCAs = authtest.NewCA(t, "another CA").Pool()
	o.MaxRetries = -1
	stranger := redis.NewClient(o)
	defer stranger.Close()
	err = stranger.Ping(t.Context()).Err()
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate signed by unknown authority")
}

// TestACLUserIsLeastPrivilege: the README's user opens a store through
// Open and a redis:// URL with its password, and is refused everything
// beyond the store's own keys and commands.
func TestACLUserIsLeastPrivilege(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	password := randomPassword(t)
	rules := createACLUser(t, srv, password, "retryd")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ACL LOG:\n%s", denials(srv))
		}
	})
	for _, r := range rules {
		// Categories other than "-@all", key or channel patterns for
		// everything, and scripts' unrestricted access would not be least
		// privilege.
		require.False(t, strings.HasPrefix(r, "+@"), "%s grants a whole category", r)
		require.NotContains(t, []string{"allkeys", "~*", "allchannels", "&*", "allcommands", "+@all", "nopass"}, r)
	}

	ctx := t.Context()
	userURL := "unix://retryd:" + password + "@" + srv.Addr()
	s, err := Open(ctx, userURL, Options{})
	require.NoError(t, err)
	defer s.Close()
	events, err := s.Subscribe(ctx)
	require.NoError(t, err)
	now := time.Now()
	_, err = s.RecordFailure(ctx, store.Failure{
		JobID: "doc-42", Phase: "extraction", ErrorType: "Timeout", Now: now,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "test",
			NextRetryCount: 1, Delay: time.Minute, DueAt: now.Add(time.Minute)},
	})
	require.NoError(t, err)
	select {
	case ev := <-events:
		require.Equal(t, store.EventScheduled, ev.Kind)
	case <-time.After(10 * time.Second):
		t.Fatal("no event reached the ACL user's subscription")
	}
	job, err := s.GetJob(ctx, "doc-42")
	require.NoError(t, err)
	require.Equal(t, store.StateProcessing, job.State)

	// The same user outside the store's keys, channels and commands.
	o, err := redis.ParseURL(userURL)
	require.NoError(t, err)
	user := redis.NewClient(o)
	defer user.Close()
	// INFO is granted for the start-up check of the eviction policy
	// (CONFIG GET, which shows passwords, is not).
	info, err := user.Info(ctx, "memory").Result()
	require.NoError(t, err)
	require.Contains(t, info, "maxmemory_policy:")
	for _, cmd := range [][]any{
		{"FLUSHALL"},
		{"FLUSHDB"},
		{"CONFIG", "GET", "requirepass"},
		{"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"},
		{"KEYS", "*"},
		{"SCAN", "0"},
		{"SHUTDOWN"},
		{"ACL", "LIST"},
		{"MONITOR"},
		{"SCRIPT", "FLUSH"},
		{"FUNCTION", "FLUSH"},
		{"MODULE", "LIST"},
		{"SET", "other:key", "x"},
		{"HSET", "{other}:j:x", "st", "1"},
		{"HGETALL", "{other}:j:x"},
		{"DEL", "{retryd}x"},
		{"PUBLISH", "{other}:events", "x"},
		{"SUBSCRIBE", "{retryd}:other"},
		// A script may not reach beyond the pattern either.
		{"EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "{retryd}:j:x"},
		{"EVAL", "return redis.call('HSET', KEYS[1], 'a', 'b')", 1, "elsewhere"},
	} {
		err := user.Do(ctx, cmd...).Err()
		require.Error(t, err, "%v should be refused", cmd)
		require.Regexp(t, `^NOPERM |^ERR The user executing the script can't`, err.Error(), "%v", cmd)
	}
	// The admin's view: the user exists, with no password in the clear.
	acl, err := srv.Client().Do(ctx, "ACL", "GETUSER", "retryd").Result()
	require.NoError(t, err)
	require.NotContains(t, fmt.Sprint(acl), password)
}

// TestACLUserOnCluster: on Redis Cluster, the user plus the README's
// Cluster addition serves the store through a redis+cluster:// URL.
func TestACLUserOnCluster(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t, testredis.Cluster())
	password := randomPassword(t)
	createACLUser(t, srv, password, "retryd")
	_, cluster := aclLines(t)
	runLine(t, srv, cluster)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ACL LOG:\n%s", denials(srv))
		}
	})
	ctx := t.Context()
	s, err := Open(ctx, fmt.Sprintf("redis+cluster://retryd:%s@%s", password, srv.Addr()), Options{})
	require.NoError(t, err)
	defer s.Close()
	now := time.Now()
	_, err = s.RecordFailure(ctx, store.Failure{
		JobID: "doc-42", Phase: "extraction", ErrorType: "Timeout", Now: now,
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "test",
			NextRetryCount: 1, Delay: time.Minute, DueAt: now.Add(time.Minute)},
	})
	require.NoError(t, err)
	tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 1, LeaseFor: time.Minute, Now: now.Add(2 * time.Minute)})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	page, err := s.ListJobs(ctx, store.ListQuery{Limit: 10})
	require.NoError(t, err)
	require.Len(t, page.Jobs, 1)
	// Nothing the store or go-redis sent was refused, but CONFIG GET,
	// which the store tries first when it inspects Redis's settings and
	// which the user is deliberately not granted (it shows passwords).
	entries, err := srv.Client().Do(ctx, "ACL", "LOG").Slice()
	require.NoError(t, err)
	for _, e := range entries {
		m, ok := e.(map[any]any)
		require.True(t, ok, "ACL LOG entry %T", e)
		require.Equal(t, "config|get", m["object"], "refused: %v", m)
	}
}
