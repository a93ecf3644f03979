package redisstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// ErrEvictionPolicy is returned by Open when Redis may evict keys (its
// maxmemory-policy is not noeviction) and Options.AllowEviction is not set.
// An evicted key is a silently lost retry, lease or job: a Redis that is out
// of memory must refuse writes (which retryd reports as UNAVAILABLE, and
// workers retry) rather than make room by dropping data.
var ErrEvictionPolicy = errors.New("Redis may evict keys")

// Durability says when a change counts as done.
type Durability string

const (
	// DurabilityAsync acknowledges a change once Redis has applied it. How
	// much of that survives a crash is Redis's persistence setting (see
	// ServerInfo.LossWindow); a failover to a replica can lose the changes
	// it had not yet received (Redis replication is asynchronous).
	DurabilityAsync Durability = "async"
	// DurabilityStrict also waits, with WAIT, until Options.WaitReplicas
	// replicas have received each change a caller is told about (reports,
	// lease extensions, manual retries and cancels) before acknowledging
	// it; when fewer confirm within Options.WaitTimeout the call fails with
	// store.ErrUnavailable (the change is applied on the primary but not
	// acknowledged; the caller retries, and the repeat waits again). It
	// needs Redis replicas and is not available on Redis Cluster.
	DurabilityStrict Durability = "strict"
)

// ServerInfo is what Open learned about the Redis it connected to: the
// settings that decide whether retryd's data can be lost.
type ServerInfo struct {
	// Version is redis_version ("" when unknown).
	Version string
	// MaxmemoryPolicy is maxmemory-policy ("" when it could not be read).
	MaxmemoryPolicy string
	// Maxmemory is maxmemory in bytes (0: no limit, or unknown).
	Maxmemory int64
	// AppendOnly is "yes" or "no" ("" when unknown).
	AppendOnly string
	// AppendFsync is "always", "everysec" or "no" ("" when unknown).
	AppendFsync string
	// Save is the RDB save points ("" when none, or unknown with SaveKnown false).
	Save      string
	SaveKnown bool
	// Role is "master" or "slave" ("" when unknown).
	Role string
	// ConnectedReplicas is connected_slaves (-1 when unknown).
	ConnectedReplicas int
	// Source says where the settings were read: "CONFIG GET" or "INFO"
	// (where CONFIG is disabled or renamed, as on managed services).
	Source string
	// Warnings are conditions an operator should know about: settings that
	// could not be read, eviction allowed, strict durability without
	// enough replicas.
	Warnings []string
}

// LossWindow describes, in a sentence, which acknowledged changes a crash
// of the Redis server can lose with its persistence settings.
func (i ServerInfo) LossWindow() string {
	switch {
	case i.AppendOnly == "yes" && i.AppendFsync == "always":
		return "none: appendfsync always writes and fsyncs every change before Redis replies"
	case i.AppendOnly == "yes" && i.AppendFsync == "everysec":
		return "about the last second of changes (appendfsync everysec; up to 2 s when the disk is slow)"
	case i.AppendOnly == "yes" && i.AppendFsync == "no":
		return "the changes the kernel had not yet flushed, typically up to 30 s (appendfsync no)"
	case i.AppendOnly == "yes":
		return "unknown: the AOF is on but appendfsync could not be read"
	case i.AppendOnly == "no" && i.SaveKnown && i.Save != "":
		return fmt.Sprintf("every change since the last RDB snapshot (save %q; no AOF)", i.Save)
	case i.AppendOnly == "no" && i.SaveKnown:
		return "everything: neither the AOF nor RDB snapshots are on, a Redis restart empties it"
	case i.AppendOnly == "no":
		return "every change since the last RDB snapshot, if snapshots are on (no AOF; the save points could not be read)"
	}
	return "unknown: the persistence settings could not be read (CONFIG and INFO refused)"
}

// ServerInfo returns what Open learned about Redis. For a store made with
// New it is empty.
func (s *Store) ServerInfo() ServerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// inspect reads the settings of every primary Redis the client writes to
// (one, or each Cluster master) and applies the eviction guard and the
// strict-durability checks of opts.
func inspect(ctx context.Context, client redis.UniversalClient, opts Options) (ServerInfo, error) {
	var nodes []ServerInfo
	var mu sync.Mutex
	read := func(ctx context.Context, c *redis.Client) error {
		info, err := inspectNode(ctx, c)
		mu.Lock()
		nodes = append(nodes, info)
		mu.Unlock()
		return err
	}
	var err error
	switch c := client.(type) {
	case *redis.ClusterClient:
		if opts.Durability == DurabilityStrict {
			return ServerInfo{}, errors.New("redisstore: strict durability (WAIT after each change) is not supported on Redis Cluster; use a primary with replicas, or Sentinel")
		}
		err = c.ForEachMaster(ctx, read)
	case *redis.Client:
		err = read(ctx, c)
	default:
		return ServerInfo{ConnectedReplicas: -1, Warnings: []string{fmt.Sprintf("cannot inspect a %T: the eviction policy and persistence were not checked", client)}}, nil
	}
	if err != nil {
		return ServerInfo{}, err
	}
	// The worst node decides: report the first one whose policy is not
	// noeviction (or unknown), else the first.
	info := nodes[0]
	for _, n := range nodes {
		if n.MaxmemoryPolicy != "noeviction" {
			info = n
			break
		}
	}
	for _, n := range nodes[1:] {
		info.Warnings = append(info.Warnings, n.Warnings...)
	}

	if info.Role == "slave" {
		return info, errors.New("redisstore: the Redis server is a read-only replica (INFO role:slave): retryd must write to the primary; " +
			"point the URL at the primary, or use redis+sentinel:// to follow failovers")
	}
	switch info.MaxmemoryPolicy {
	case "noeviction":
	case "":
		info.Warnings = append(info.Warnings, "could not read maxmemory-policy (CONFIG GET and INFO were refused): "+
			"make sure it is noeviction, or Redis may silently drop retryd's keys when it runs out of memory")
	default:
		msg := fmt.Sprintf("maxmemory-policy is %s: when Redis reaches maxmemory it deletes keys to make room, "+
			"and a deleted key is a silently lost retry, lease or job history", info.MaxmemoryPolicy)
		if strings.HasPrefix(info.MaxmemoryPolicy, "volatile-") {
			msg += " (volatile policies only delete keys with a TTL, and retryd sets none, so retryd's own keys are safe)"
		}
		if !opts.AllowEviction {
			return info, fmt.Errorf("redisstore: %w: %s; set maxmemory-policy noeviction so that a full Redis refuses writes "+
				"(retryd answers UNAVAILABLE and workers retry) instead", ErrEvictionPolicy, msg)
		}
		info.Warnings = append(info.Warnings, msg+"; allowed by configuration")
	}

	if opts.Durability == DurabilityStrict && info.ConnectedReplicas >= 0 && info.ConnectedReplicas < opts.WaitReplicas {
		info.Warnings = append(info.Warnings, fmt.Sprintf(
			"strict durability waits for %d replicas but Redis has %d connected: reports fail with UNAVAILABLE until enough replicas are connected",
			opts.WaitReplicas, info.ConnectedReplicas))
	}
	return info, nil
}

// inspectNode reads one server's settings with CONFIG GET, falling back to
// INFO where CONFIG is refused (disabled, renamed, or not permitted to the
// ACL user). Only a failure to reach the server is an error.
func inspectNode(ctx context.Context, c *redis.Client) (ServerInfo, error) {
	info := ServerInfo{ConnectedReplicas: -1}
	fields, infoErr := c.Info(ctx).Result()
	if infoErr != nil && unavailable(infoErr) && !isRefusal(infoErr) {
		return info, fmt.Errorf("redisstore: inspect Redis: %w: %w", store.ErrUnavailable, infoErr)
	}
	kv := parseInfo(fields)
	info.Version, info.Role = kv["redis_version"], kv["role"]
	if v, ok := kv["connected_slaves"]; ok {
		info.ConnectedReplicas, _ = strconv.Atoi(v)
	}

	config := map[string]string{}
	var configErr error
	for _, name := range []string{"maxmemory-policy", "maxmemory", "appendonly", "appendfsync", "save"} {
		m, err := c.ConfigGet(ctx, name).Result()
		if err != nil {
			configErr = err
			break
		}
		for k, v := range m {
			config[k] = v
		}
	}
	switch {
	case configErr == nil:
		info.Source = "CONFIG GET"
		info.MaxmemoryPolicy = config["maxmemory-policy"]
		info.Maxmemory, _ = strconv.ParseInt(config["maxmemory"], 10, 64)
		info.AppendOnly, info.AppendFsync = config["appendonly"], config["appendfsync"]
		info.Save, info.SaveKnown = config["save"]
	case unavailable(configErr) && !isRefusal(configErr):
		return info, fmt.Errorf("redisstore: inspect Redis: %w: %w", store.ErrUnavailable, configErr)
	case infoErr == nil:
		info.Source = "INFO"
		info.MaxmemoryPolicy = kv["maxmemory_policy"]
		info.Maxmemory, _ = strconv.ParseInt(kv["maxmemory"], 10, 64)
		switch kv["aof_enabled"] {
		case "1":
			info.AppendOnly = "yes"
		case "0":
			info.AppendOnly = "no"
		}
		info.Warnings = append(info.Warnings, fmt.Sprintf("CONFIG GET was refused (%v): settings read from INFO, "+
			"which does not show appendfsync or the RDB save points", configErr))
	default:
		info.Warnings = append(info.Warnings, fmt.Sprintf("CONFIG GET (%v) and INFO (%v) were refused", configErr, infoErr))
	}
	return info, nil
}

// isRefusal reports a reply of a server that refuses the command itself
// (unknown or renamed, not permitted): the server is there.
func isRefusal(err error) bool {
	re, ok := replyError(err)
	if !ok {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "NOPERM") || strings.HasPrefix(msg, "ERR unknown command") ||
		strings.HasPrefix(msg, "ERR unknown subcommand")
}

// parseInfo reads INFO's "name:value" lines.
func parseInfo(s string) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			kv[k] = v
		}
	}
	return kv
}

// durable makes an acknowledged change durable as Options.Durability asks.
// With DurabilityStrict it writes the sync counter and WAITs on that same
// connection: the counter's write comes after the caller's script (whose
// reply has arrived), so once replicas confirm the counter they hold the
// script's effects too. That holds for a repeated report as well, whose
// script changed nothing but whose first run may not have reached the
// replicas yet. Concurrent changes share one counter write and WAIT
// (replicaWaiter).
func (s *Store) durable(ctx context.Context, op string) error {
	if s.opts.Durability != DurabilityStrict {
		return nil
	}
	c, ok := s.client.(*redis.Client)
	if !ok {
		return fmt.Errorf("redisstore: %s: strict durability needs a single-primary client, not %T", op, s.client)
	}
	n, err := s.waiter.wait(ctx, func() (int64, error) { return s.waitReplicas(c) })
	if err != nil {
		return s.wrap(op+": wait for replicas", err)
	}
	if n < int64(s.opts.WaitReplicas) {
		return fmt.Errorf("redisstore: %s: %w: %d of %d replicas confirmed the change within %v (strict durability); it is applied on the primary but not acknowledged",
			op, store.ErrUnavailable, n, s.opts.WaitReplicas, s.opts.WaitTimeout)
	}
	return nil
}

// waitReplicas is one round of durable: the counter write and WAIT, on one
// connection, bounded by go-redis's timeouts and WaitTimeout (no caller's
// context: the round answers every change that joined it).
func (s *Store) waitReplicas(c *redis.Client) (int64, error) {
	ctx := context.Background()
	conn := c.Conn()
	defer conn.Close()
	// HINCRBY rather than INCR: the scripts use it, so an ACL user limited
	// to the store's commands may run it.
	if err := conn.HIncrBy(ctx, s.k.sync(), "n", 1).Err(); err != nil {
		return 0, err
	}
	return conn.Wait(ctx, s.opts.WaitReplicas, s.opts.WaitTimeout).Result()
}

// Defaults of the strict-durability options.
const (
	DefaultWaitReplicas = 1
	DefaultWaitTimeout  = time.Second
)
