package redisstore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/testredis"
)

// The whole-state tests describe Redis as a map from key to value, seed it,
// call one store method and compare every key afterwards, together with the
// messages the call published. The expected values are written with the
// encodings of doc.go spelled out (fld below), not with the store's own
// encoders, so that a change of layout shows up here.

// state is every key of a Redis: key → hash, zset or set.
type state map[string]any

type (
	hash map[string]string
	zset []z // in Redis order: by score, then member
	set  []string
	z    struct {
		M string
		S int64
	}
)

// t0 is the scenarios' "now" (09:00, an hour boundary).
var t0 = time.Date(2026, time.March, 2, 9, 0, 0, 0, time.UTC)

// us is t0+d as the decimal Unix µs the store writes.
func us(d time.Duration) string { return strconv.FormatInt(t0.Add(d).UnixMicro(), 10) }

// usn is us as a number, for sorted-set scores.
func usn(d time.Duration) int64 { return t0.Add(d).UnixMicro() }

// ns is t0+d as decimal Unix ns (a verdict's DueAt).
func ns(d time.Duration) string { return strconv.FormatInt(t0.Add(d).UnixNano(), 10) }

// hourOf is the stats hour of t0+d.
func hourOf(d time.Duration) int64 { return t0.Add(d).Unix() / 3600 }

// fld concatenates length-prefixed fields: "<len>:<bytes>…".
func fld(fs ...string) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "%d:%s", len(f), f)
	}
	return b.String()
}

// harness is one test's Redis, store and event tap.
type harness struct {
	t   *testing.T
	ctx context.Context
	srv *testredis.Server
	rdb *redis.Client
	s   *Store
}

// setup starts a redis-server for the test and a store with prefix "t".
func setup(t *testing.T, opts ...testredis.Option) *harness {
	t.Helper()
	t.Parallel()
	srv := testredis.Start(t, opts...)
	s, err := Open(t.Context(), srv.URL(), Options{Prefix: "t"})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return &harness{t: t, ctx: t.Context(), srv: srv, rdb: srv.Client(), s: s}
}

// seed writes st into the (empty) Redis.
func (h *harness) seed(st state) {
	h.t.Helper()
	for key, v := range st {
		var err error
		switch v := v.(type) {
		case hash:
			err = h.rdb.HSet(h.ctx, key, map[string]any(toAny(v))).Err()
		case zset:
			zs := make([]redis.Z, len(v))
			for i, m := range v {
				zs[i] = redis.Z{Member: m.M, Score: float64(m.S)}
			}
			err = h.rdb.ZAdd(h.ctx, key, zs...).Err()
		case set:
			err = h.rdb.SAdd(h.ctx, key, toAnySlice(v)...).Err()
		default:
			h.t.Fatalf("seed: %s has unsupported value %T", key, v)
		}
		require.NoError(h.t, err, "seed %s", key)
	}
}

// dump reads every key of the Redis.
func (h *harness) dump() state {
	h.t.Helper()
	keys, err := h.rdb.Keys(h.ctx, "*").Result()
	require.NoError(h.t, err)
	st := state{}
	for _, key := range keys {
		typ, err := h.rdb.Type(h.ctx, key).Result()
		require.NoError(h.t, err)
		switch typ {
		case "hash":
			v, err := h.rdb.HGetAll(h.ctx, key).Result()
			require.NoError(h.t, err)
			st[key] = hash(v)
		case "zset":
			v, err := h.rdb.ZRangeWithScores(h.ctx, key, 0, -1).Result()
			require.NoError(h.t, err)
			zs := make(zset, len(v))
			for i, m := range v {
				zs[i] = z{M: m.Member.(string), S: int64(m.Score)}
			}
			st[key] = zs
		case "set":
			v, err := h.rdb.SMembers(h.ctx, key).Result()
			require.NoError(h.t, err)
			slices.Sort(v)
			st[key] = set(v)
		default:
			h.t.Fatalf("dump: %s is a %s, which the store never writes", key, typ)
		}
	}
	return st
}

// requireState compares the whole Redis with want.
func (h *harness) requireState(want state, what string) {
	h.t.Helper()
	if d := cmp.Diff(want, h.dump()); d != "" {
		h.t.Fatalf("Redis after %s (-want +got):\n%s", what, d)
	}
}

// tap subscribes to the store's events channel and returns a function that
// returns every message published since, in order. It publishes a marker
// and reads up to it, so it never waits for messages that will not come.
func (h *harness) tap() func() []string {
	h.t.Helper()
	ps := h.rdb.Subscribe(h.ctx, "{t}:events")
	_, err := ps.Receive(h.ctx)
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = ps.Close() })
	return func() []string {
		h.t.Helper()
		const marker = "--marker--"
		require.NoError(h.t, h.rdb.Publish(h.ctx, "{t}:events", marker).Err())
		var msgs []string
		for {
			ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
			m, err := ps.ReceiveMessage(ctx)
			cancel()
			require.NoError(h.t, err, "waiting for the events marker")
			if m.Payload == marker {
				return msgs
			}
			msgs = append(msgs, m.Payload)
		}
	}
}

// clone deep-copies st, so that a test can derive "after" from "before".
func (st state) clone() state {
	out := state{}
	for k, v := range st {
		switch v := v.(type) {
		case hash:
			c := hash{}
			for f, x := range v {
				c[f] = x
			}
			out[k] = c
		case zset:
			out[k] = slices.Clone(v)
		case set:
			out[k] = slices.Clone(v)
		}
	}
	return out
}

func toAny(h hash) map[string]any {
	m := make(map[string]any, len(h))
	for k, v := range h {
		m[k] = v
	}
	return m
}

func toAnySlice(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
