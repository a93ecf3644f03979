package redislog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/redislog"
)

func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		out = append(out, m)
	}
	buf.Reset()
	return out
}

// TestRateLimited: a burst of one kind of message gives one line per
// interval, the next one counting those left out; another kind has its own
// allowance.
func TestRateLimited(t *testing.T) {
	var buf bytes.Buffer
	clock := clockwork.NewFakeClock()
	l := redislog.New(slog.New(slog.NewJSONHandler(&buf, nil)), 10*time.Second, clock)
	ctx := context.Background()
	const dial = "redis: connection pool: failed to dial after %d attempts: %v"
	for i := range 80 { // eight a second for ten seconds
		l.Printf(ctx, dial, 5, "dial tcp 127.0.0.1:6379: connect: connection refused")
		if i == 40 {
			l.Printf(ctx, "redis: %s: hook rejected conn[%d]", "pool", 7)
		}
		clock.Advance(125 * time.Millisecond)
	}
	got := lines(t, &buf)
	require.Len(t, got, 2)
	require.Equal(t, "WARN", got[0]["level"])
	require.Equal(t, "redis client: connection pool: failed to dial after 5 attempts: dial tcp 127.0.0.1:6379: connect: connection refused", got[0]["msg"])
	require.Equal(t, "go-redis", got[0]["component"])
	require.NotContains(t, got[0], "suppressed")
	require.Equal(t, "redis client: pool: hook rejected conn[7]", got[1]["msg"])

	l.Printf(ctx, dial, 5, "refused again")
	got = lines(t, &buf)
	require.Len(t, got, 1)
	require.Equal(t, float64(79), got[0]["suppressed"], "the 79 left out over the interval")
	require.Equal(t, "redis client: connection pool: failed to dial after 5 attempts: refused again", got[0]["msg"])
}

// TestGoRedisLogsThroughIt: installed with redis.SetLogger, go-redis's
// dial failures come out as structured warnings, once per interval.
func TestGoRedisLogsThroughIt(t *testing.T) {
	var buf syncBuffer
	redis.SetLogger(redislog.New(slog.New(slog.NewJSONHandler(&buf, nil)), time.Hour, nil))
	// Port 1 on loopback refuses at once; nothing listens there unprivileged.
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	defer client.Close()
	for range 3 {
		require.Error(t, client.Ping(context.Background()).Err())
	}
	got := lines(t, buf.take())
	require.Len(t, got, 1, "three failed dials, one line")
	require.Contains(t, got[0]["msg"], "redis client: connection pool: failed to dial")
}

// syncBuffer is a bytes.Buffer safe for go-redis's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) take() *bytes.Buffer {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := bytes.NewBuffer(bytes.Clone(b.buf.Bytes()))
	b.buf.Reset()
	return out
}
