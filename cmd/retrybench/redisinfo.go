package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ownCommands are the commands retrybench itself sends to Redis during a
// run (its connection is made before the first reading); they are left out
// of the per-attempt counts.
var ownCommands = map[string]bool{"info": true, "slowlog|get": true, "slowlog": true}

// commandCalls reads INFO commandstats: calls per command name. Redis
// counts every command a Lua script runs (redis.call) under its own name
// as well as the EVALSHA that ran the script, so the totals include
// script-internal commands.
func commandCalls(ctx context.Context, c *redis.Client) (map[string]int64, error) {
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO commandstats: %w", err)
	}
	calls := make(map[string]int64)
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		if ownCommands[name] {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("redis INFO commandstats: %q: %w", line, err)
		}
		calls[name] = v
	}
	return calls, nil
}

// commandDelta is after minus before, per command, without zeros.
func commandDelta(before, after map[string]int64) map[string]int64 {
	d := make(map[string]int64)
	for name, n := range after {
		if v := n - before[name]; v != 0 {
			d[name] = v
		}
	}
	return d
}

func sumCalls(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// formatCalls lists commands per attempt, most frequent first.
func formatCalls(delta map[string]int64, attempts int64) string {
	names := slices.SortedFunc(maps.Keys(delta), func(a, b string) int {
		if delta[a] != delta[b] {
			return int(delta[b] - delta[a])
		}
		return strings.Compare(a, b)
	})
	var b strings.Builder
	for i, name := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.2f", strings.ToUpper(name), float64(delta[name])/float64(attempts))
	}
	return b.String()
}

// usedMemory reads used_memory from INFO memory.
func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("redis INFO memory: %w", err)
	}
	v := infoField(info, "used_memory")
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redis INFO memory: used_memory %q: %w", v, err)
	}
	return n, nil
}

// infoField returns one "name:value" field of an INFO reply.
func infoField(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// slowEntries returns the SLOWLOG entries logged since start (Redis stamps
// them in whole seconds), slowest first, leaving the log as it is.
func slowEntries(ctx context.Context, c *redis.Client, since time.Time) ([]redis.SlowLog, error) {
	all, err := c.SlowLogGet(ctx, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis SLOWLOG GET: %w", err)
	}
	var out []redis.SlowLog
	for _, e := range all {
		if !e.Time.Before(since.Truncate(time.Second)) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b redis.SlowLog) int { return int(b.Duration - a.Duration) })
	return out, nil
}
