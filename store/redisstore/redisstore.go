package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/retryd/retryd/store"
)

// Options configure a Store.
type Options struct {
	// Prefix names the store's keys: every key is "{<prefix>}:…", so that
	// they share one Redis Cluster hash slot, and stores with different
	// prefixes share a Redis without seeing each other. It must not contain
	// "{" or "}". Defaults to "retryd".
	Prefix string
	// JobRetention is how long Expire keeps terminal jobs after their last
	// update. Defaults to store.DefaultJobRetention.
	JobRetention time.Duration
	// StatsRetention is how long Expire keeps hourly stats counters.
	// Defaults to store.DefaultStatsRetention.
	StatsRetention time.Duration
	// MaxTerminalJobs bounds the failed, completed and canceled jobs kept:
	// beyond it Expire removes the least recently updated ones, whatever
	// their age. store.NoCountBound turns the bound off. Defaults to
	// store.DefaultMaxTerminalJobs.
	MaxTerminalJobs int
	// ExpireLimit bounds the jobs one Expire call deletes, so that a large
	// backlog of old jobs is worked off over several janitor runs instead of
	// one long call. Defaults to 1000.
	ExpireLimit int
	// AllowEviction lets Open accept a Redis whose maxmemory-policy is not
	// noeviction (it then only warns, in ServerInfo). Without it Open fails
	// with ErrEvictionPolicy: an evicted key is silently lost data.
	AllowEviction bool
	// Durability is when a change counts as done: DurabilityAsync (applied
	// by Redis) or DurabilityStrict (also received by WaitReplicas
	// replicas). Defaults to DurabilityAsync.
	Durability Durability
	// WaitReplicas is how many replicas must confirm each acknowledged
	// change under DurabilityStrict. Defaults to 1.
	WaitReplicas int
	// WaitTimeout bounds each wait for replicas under DurabilityStrict; at
	// least a millisecond (WAIT counts milliseconds, and 0 would wait
	// forever). Defaults to 1 second.
	WaitTimeout time.Duration
	// TLS adds a private CA and a client certificate to a rediss URL's
	// TLS (see NewClient). nil: the system's CAs, no client certificate.
	TLS *ClientTLS
	// EventBuffer is the capacity of each Subscribe channel; events are
	// dropped, not queued without bound, when the reader falls behind (they
	// are hints). Defaults to 256.
	EventBuffer int
}

// Defaults of Options.
const (
	DefaultPrefix      = "retryd"
	DefaultExpireLimit = 1000
	DefaultEventBuffer = 256
)

// withDefaults fills zero fields and validates the rest.
func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return o, fmt.Errorf("redisstore: Options.Prefix %q must not contain braces (they would break the key hash tag)", o.Prefix)
	}
	if o.JobRetention == 0 {
		o.JobRetention = store.DefaultJobRetention
	}
	if o.StatsRetention == 0 {
		o.StatsRetention = store.DefaultStatsRetention
	}
	if o.MaxTerminalJobs == 0 {
		o.MaxTerminalJobs = store.DefaultMaxTerminalJobs
	}
	if o.ExpireLimit == 0 {
		o.ExpireLimit = DefaultExpireLimit
	}
	if o.EventBuffer == 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	if o.Durability == "" {
		o.Durability = DurabilityAsync
	}
	if o.WaitReplicas == 0 {
		o.WaitReplicas = DefaultWaitReplicas
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	switch {
	case o.JobRetention < 0:
		return o, fmt.Errorf("redisstore: Options.JobRetention %v is negative", o.JobRetention)
	case o.StatsRetention < 0:
		return o, fmt.Errorf("redisstore: Options.StatsRetention %v is negative", o.StatsRetention)
	case o.MaxTerminalJobs < 0 && o.MaxTerminalJobs != store.NoCountBound:
		return o, fmt.Errorf("redisstore: Options.MaxTerminalJobs %d is negative (store.NoCountBound turns the bound off)", o.MaxTerminalJobs)
	case o.ExpireLimit < 0:
		return o, fmt.Errorf("redisstore: Options.ExpireLimit %d is negative", o.ExpireLimit)
	case o.EventBuffer < 0:
		return o, fmt.Errorf("redisstore: Options.EventBuffer %d is negative", o.EventBuffer)
	case o.Durability != DurabilityAsync && o.Durability != DurabilityStrict:
		return o, fmt.Errorf("redisstore: Options.Durability %q is not %q or %q", o.Durability, DurabilityAsync, DurabilityStrict)
	case o.WaitReplicas < 0:
		return o, fmt.Errorf("redisstore: Options.WaitReplicas %d is negative", o.WaitReplicas)
	case o.WaitTimeout < time.Millisecond:
		return o, fmt.Errorf("redisstore: Options.WaitTimeout %v is below 1ms", o.WaitTimeout)
	}
	return o, nil
}

// Store is the Redis implementation of store.Store. It is safe for
// concurrent use, and any number of Stores (in any number of processes)
// with the same prefix may share one Redis.
type Store struct {
	client redis.UniversalClient
	owned  bool // Close closes client (Open made it)
	opts   Options
	k      keys

	mu     sync.Mutex
	info   ServerInfo // what Open learned about Redis
	closed bool
	done   chan struct{} // closed by Close: ends subscriptions
	subs   sync.WaitGroup

	batch  *batcher      // sends the scripts of concurrent calls together (batch.go)
	waiter replicaWaiter // shares strict durability's WAIT (replicawait.go)
}

var (
	_ store.Store          = (*Store)(nil)
	_ store.BacklogCounter = (*Store)(nil)
)

// Open connects to the Redis named by rawURL (see NewClient for the forms:
// single server, Sentinel, Cluster), checks that it answers, reads the
// settings that decide whether data can be lost (ServerInfo), and returns a
// Store that owns the connection. A Redis that does not answer gives an
// error wrapping store.ErrUnavailable; one that may evict keys gives
// ErrEvictionPolicy unless opts.AllowEviction is set.
func Open(ctx context.Context, rawURL string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	client, err := NewClient(rawURL, opts.TLS)
	if err != nil {
		return nil, err
	}
	s := newStore(client, opts)
	s.owned = true
	// A plain PING: a full Redis (OOM) must not stop retryd from starting
	// (it reports NOT_SERVING until Redis has room again).
	if err := s.wrap("ping", client.Ping(ctx).Err()); err != nil {
		_ = client.Close()
		return nil, err
	}
	info, err := inspect(ctx, client, opts)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	s.info = info
	return s, nil
}

// New returns a Store on a client the caller made and keeps: Close does not
// close it. It neither checks nor inspects the server (ServerInfo is
// empty). New panics when opts are invalid (a brace in Prefix, a negative
// duration, strict durability on a Cluster client), a programming error.
func New(client redis.UniversalClient, opts Options) *Store {
	opts, err := opts.withDefaults()
	if err != nil {
		panic(err)
	}
	if _, single := client.(*redis.Client); opts.Durability == DurabilityStrict && !single {
		panic(fmt.Sprintf("redisstore: strict durability needs a single-primary client, not %T", client))
	}
	return newStore(client, opts)
}

func newStore(client redis.UniversalClient, opts Options) *Store {
	return &Store{client: client, opts: opts, k: newKeys(opts.Prefix), done: make(chan struct{}), batch: newBatcher(client)}
}

// Ping reports whether Redis answers and accepts writes to the store's
// keys. A replica that became read-only in a failover (READONLY) or a full
// Redis under noeviction (OOM) still answers PING while refusing every
// report and claim, so the probe is a write that changes nothing: HINCRBY
// by 0 of a field of {P}:sync, routed like the store's other keys (on
// Cluster, to the primary of their slot). Redis refuses it exactly when it
// would refuse a report. It is propagated to replicas and the AOF like any
// write: a few dozen bytes per health check.
func (s *Store) Ping(ctx context.Context) error {
	return s.wrap("ping", s.client.HIncrBy(ctx, s.k.sync(), "probe", 0).Err())
}

// Close ends every subscription and, when Open made the client, closes it.
// It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.subs.Wait()
	s.batch.close()
	if s.owned {
		return s.client.Close()
	}
	return nil
}

// wrap names the operation in err and maps the failures of the connection
// or of a Redis that cannot serve (loading, failing over, out of memory) to
// store.ErrUnavailable: in all of them the command was refused or its
// outcome is unknown, and a retry of the same report is safe (reports are
// idempotent). Other errors (a script bug, a corrupt value) stay internal.
func (s *Store) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if unavailable(err) {
		return fmt.Errorf("redisstore: %s: %w: %w", op, store.ErrUnavailable, err)
	}
	return fmt.Errorf("redisstore: %s: %w", op, err)
}

// unavailableReplies are the Redis error prefixes of a server that cannot
// serve right now; the command was not executed.
var unavailableReplies = []string{
	"LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "BUSY",
	"OOM", "NOREPLICAS", "NOAUTH", "WRONGPASS", "NOPERM", "ERR max number of clients",
}

// errCorrupt marks a stored value or script reply the store cannot decode
// (a bug, or a foreign writer under our prefix). It is never reported as
// store.ErrUnavailable: retrying would not help.
var errCorrupt = errors.New("corrupt data")

func unavailable(err error) bool {
	if errors.Is(err, errCorrupt) {
		return false
	}
	if re, ok := replyError(err); ok {
		msg := re.Error()
		for _, p := range unavailableReplies {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// Anything that is not a reply from Redis is a failure to get one:
	// dial and I/O errors, timeouts, a closed client or pool, a canceled
	// context.
	return true
}

// replyError returns err's error reply from Redis, and false when err is
// not one but a failure to get a reply (dial, I/O, timeout, closed
// client), which go-redis sometimes also marks as a redis.Error.
func replyError(err error) (redis.Error, bool) {
	var re redis.Error
	if !errors.As(err, &re) || isConnErr(err) {
		return nil, false
	}
	return re, true
}

// isConnErr reports errors that implement redis.Error but are transport
// failures (go-redis marks some of them as redis errors).
func isConnErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, redis.ErrClosed) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}

// newLeaseID returns 128 random bits, URL-safe.
func newLeaseID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Script result codes: every state-changing script returns {code, details…}.
const (
	codeOK           = 0
	codeDuplicate    = 1 // {1, stored record}
	codeConflict     = 2
	codeTerminal     = 3 // {3, state}
	codeLeaseNotHeld = 4
	codeLeaseActive  = 5  // {5, expiry µs}
	codePending      = 6  // {6, phase, retry_count}
	codeMoved        = 7  // {7, actual phase[, bucket]}: the keys were guessed wrong; rebuild and rerun
	codeNotFound     = 8  //
	codeNotFailed    = 9  // {9, state}
	codeUnknownPhase = 10 // {10, phase}
	codeOutOfOrder   = 11 // {11, retry_count recorded}
)

// Bounds of the Go loops around scripts and scans.
const (
	// maxMovedAttempts bounds the reruns after codeMoved: a job changes
	// phase at most once per report, so more means it is being hammered.
	maxMovedAttempts = 5
	// claimRounds bounds the reads of the due sets per Claim: a round only
	// comes up short when concurrent claimers took some candidates.
	claimRounds = 4
	// expireBatch is the number of jobs (or stats hours) per Expire script.
	expireBatch = 100
	// listScanPerCall bounds the index entries one ListJobs call looks at.
	listScanPerCall = 1000
	// defaultListLimit is the page size when ListQuery.Limit is not set.
	defaultListLimit = 50
)

// statsHourMicros is store.StatsBucket in µs.
const statsHourMicros = int64(store.StatsBucket / time.Microsecond)

// luaPrelude is prepended to every script: the length-prefixed field
// helpers of codec.go and the result codes. It is constant text; values
// only ever reach a script through KEYS and ARGV.
var luaPrelude = fmt.Sprintf(`
local OK, DUPLICATE, CONFLICT, TERMINAL, LEASE_NOT_HELD, LEASE_ACTIVE = %d, %d, %d, %d, %d, %d
local PENDING, MOVED, NOT_FOUND, NOT_FAILED, UNKNOWN_PHASE, OUT_OF_ORDER = %d, %d, %d, %d, %d, %d
local MAX_TYPES, OTHER = %d, %q
-- ns encodes one length-prefixed field (codec.go).
local function ns(s) return #s .. ':' .. s end
-- fields decodes a string of length-prefixed fields into a list.
local function fields(s)
  local out, i = {}, 1
  while i <= #s do
    local c = string.find(s, ':', i, true)
    local n = tonumber(string.sub(s, i, c - 1))
    out[#out + 1] = string.sub(s, c + 1, c + n)
    i = c + n + 1
  end
  return out
end
-- first decodes the first length-prefixed field only.
local function first(s)
  local c = string.find(s, ':', 1, true)
  return string.sub(s, c + 1, c + tonumber(string.sub(s, 1, c - 1)))
end
-- bucket is the ListJobs bucket (keys.go) of a job's state.
local function bucket(st)
  if st == '1' then return 'p' end
  if st == '2' then return 'f' end
  if st == '3' then return 'c' end
  return 'x'
end
-- capTypes bounds the error types a stats hash counts per phase
-- (store.MaxStatsErrorTypes). f is a failure's stats field (codec.go), just
-- created by HINCRBY: when its error type is new to the phase this hour and
-- the phase has its fill of types, the failure is moved to the type
-- OTHER. Each phase's count of types is the field "t0" .. ns(phase), which
-- Stats skips. Only a report that creates a field comes here: once an
-- hour per phase, outcome and type.
local function capTypes(key, f)
  local rest = string.sub(f, 3)
  local c = string.find(rest, ':', 1, true)
  local phasef = string.sub(rest, 1, c + tonumber(string.sub(rest, 1, c - 1)))
  if string.sub(rest, #phasef + 1) == OTHER then return end
  local seen = 0
  for _, v in ipairs(redis.call('HMGET', key, 'r0' .. rest, 'r1' .. rest, 'g0' .. rest, 'g1' .. rest)) do
    if v then seen = seen + 1 end
  end
  if seen > 1 then return end
  local counter = 't0' .. phasef
  if redis.call('HINCRBY', key, counter, 1) <= MAX_TYPES then return end
  redis.call('HINCRBY', key, counter, -1)
  redis.call('HDEL', key, f)
  redis.call('HINCRBY', key, string.sub(f, 1, 2) .. phasef .. OTHER, 1)
end
`, codeOK, codeDuplicate, codeConflict, codeTerminal, codeLeaseNotHeld, codeLeaseActive,
	codePending, codeMoved, codeNotFound, codeNotFailed, codeUnknownPhase, codeOutOfOrder,
	store.MaxStatsErrorTypes, store.OtherErrorType)

// newScript compiles a script body with the prelude.
func newScript(body string) *redis.Script { return redis.NewScript(luaPrelude + body) }

// run runs a script (EVALSHA, falling back to EVAL once per server) and
// returns its reply as a list. Concurrent calls share pipelines (batch.go).
func (s *Store) run(ctx context.Context, op string, script *redis.Script, keys []string, args ...any) ([]any, error) {
	res, err := s.batch.run(ctx, script, keys, args)
	if err != nil {
		return nil, s.wrap(op, err)
	}
	return res, nil
}

// replyCode returns the result code of a script reply.
func replyCode(res []any) (int64, error) {
	if len(res) == 0 {
		return 0, fmt.Errorf("%w: empty script reply", errCorrupt)
	}
	c, ok := res[0].(int64)
	if !ok {
		return 0, fmt.Errorf("%w: script reply starts with %T, not a code", errCorrupt, res[0])
	}
	return c, nil
}

// replyString returns res[i] as a string ("" when absent or nil).
func replyString(res []any, i int) string {
	if i >= len(res) {
		return ""
	}
	s, _ := res[i].(string)
	return s
}

// stateName renders a stored state digit for messages.
func stateName(digit string) string {
	var p parser
	return store.JobState(p.uint(digit)).String()
}

// statsHourOf is the Unix hour of t (floor).
func statsHourOf(t time.Time) int64 {
	us := store.NowMicros(t)
	h := us / statsHourMicros
	if us%statsHourMicros < 0 {
		h--
	}
	return h
}
