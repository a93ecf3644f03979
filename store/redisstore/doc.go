// Package redisstore is the production store.Store: Redis (single server,
// Sentinel or Cluster), shared by any number of retryd replicas.
//
//	st, err := redisstore.Open(ctx, "redis://localhost:6379/0", redisstore.Options{})
//
// Open accepts redis://, rediss://, unix://, redis+sentinel:// and
// redis+cluster:// URLs (see NewClient); New wraps a client the caller made.
//
// # Atomicity
//
// Every change of state (RecordFailure, RecordSuccess, Claim, ExtendLease,
// ReturnLease, RetryJob, CancelJob, Expire) is one Lua script, run with
// EVALSHA: the checks of the store package doc and the writes they guard
// happen in one step that no other client interleaves with, whichever
// replica sends it. A report is acknowledged after the script returns, that
// is after Redis applied it; how durable that is is Redis's persistence
// setting (appendonly yes with appendfsync always keeps every acknowledged
// report across a crash; everysec may lose the last second), which Open
// reads and ServerInfo.LossWindow states. With Options.Durability
// DurabilityStrict a report is acknowledged only once WAIT confirms that
// Options.WaitReplicas replicas received it (server.go). Reads
// (GetJob, ListJobs, Stats, NextDue, NextLeaseExpiry, ExpiredLeases) are
// plain commands and pipelines.
//
// Every key a script touches is passed in KEYS, and every key starts with
// the hash tag "{<prefix>}", so on Redis Cluster all of a store's keys live
// in one hash slot (one shard) and every script is legal there. Values (ids,
// phases, messages, payloads, labels) reach scripts only through ARGV and
// are stored as they are, byte for byte.
//
// Some keys depend on a job's current phase, which only the stored job
// knows (its ListJobs index, its due set). The Go side passes the keys it
// expects (for a report: the report's phase; for RetryJob, CancelJob and
// ReturnLease: what it just read), the script checks the expectation before
// writing anything, and answers MOVED when it was wrong; the call is then
// rebuilt and rerun.
//
// Concurrent changes share round trips: while a batch of scripts is on its
// way, other calls' scripts queue and go out together as one pipeline
// (batch.go; up to two batches in flight, no delay for a lone call). Each
// script is still one EVALSHA and atomic; a pipeline is not a transaction:
// the scripts run one after another, each with its own reply, and one
// script's error reply (OOM, a script error) fails only its call. A
// connection failure fails its batch's calls with store.ErrUnavailable
// (outcome unknown, as for a single command); a caller whose context ends
// while queued is not sent.
//
// Events (store.Event) are published by the scripts on the channel
// {<prefix>}:events, so every replica's Subscribe sees every replica's
// schedules and lease releases.
//
// # Memory
//
// Open refuses a Redis whose maxmemory-policy is not noeviction unless
// Options.AllowEviction is set (ErrEvictionPolicy): an evicted key is a
// retry, lease or history lost without a trace. With noeviction a full
// Redis refuses writes ("OOM"), which the store reports as
// store.ErrUnavailable; Redis refuses a script only at its first write, so
// a refused script changed nothing, and one that Redis lets finish (it
// started by deleting) was applied whole.
//
// # Data layout
//
// {P} stands for "{<prefix>}", <job> for a job id, <phase> for a phase name,
// µs for decimal Unix microseconds (due times and expiries rounded up,
// other times rounded down: store.DueMicros, store.NowMicros).
//
//	key                       type     holds
//	{P}:j:<job>               hash     the job (fields below)
//	{P}:a:<job>               hash     its attempts: "<cycle>:<retry_count>:<phase>" → attempt record;
//	                                   its payloads: "#<n>" → payload bytes
//	{P}:due:<phase>           zset     scheduled, unleased attempts: member job id, score due µs
//	{P}:leases                zset     leased attempts: member job id, score lease expiry µs
//	{P}:idx:<bucket>:<phase>  zset     ListJobs index: member job id, score updated µs; phase is
//	                                   the job's current phase; bucket p = processing (whatever
//	                                   its pending attempt: a claim moves nothing, ListJobs
//	                                   filters "in backoff" on the jobs it reads); f = failed;
//	                                   c = completed; x = canceled
//	{P}:phases                set      every phase that has been a job's current phase (which
//	                                   due and index keys may exist); never shrinks, so a Store
//	                                   adds a phase at most once a minute (phaseCache, keys.go)
//	{P}:stats:<hour>          hash     counters of the attempts finished in that hour (Unix
//	                                   hours), one field per kind (below)
//	{P}:hours                 zset     the hours that have a stats hash: member and score the hour
//	{P}:sync                  hash     field n: a counter strict durability increments before WAIT (server.go)
//	{P}:events                channel  Pub/Sub channel (not a key) of event messages (below)
//
// Fields of the job hash {P}:j:<job> (short names: a job hash is kept small
// enough for Redis's compact listpack encoding):
//
//	st        state: 1 processing, 2 failed, 3 completed, 4 canceled
//	ph        current phase
//	cy        cycle (1, +1 per RetryJob)
//	lb        labels, encoded as fields key, value, key, value… sorted by key; absent = none
//	ca, ua    created, updated µs
//	pd        the pending attempt, absent or empty when none (a report that ends it sets
//	          it empty with the job's other fields instead of deleting it with an HDEL):
//	          fields phase, retry_count, due µs; leased: also lease id, lease expiry µs,
//	          worker id, leased-at µs
//	lf        the attempts-hash field of the most recent failed attempt
//	fe, ft    final error and error type (give-up verdict; a cancel's reason in fe)
//	tr        total retries (the retry_count of the give-up)
//	n         attempts recorded (the newest attempt's sequence number)
//	nb        payloads stored (the newest payload's number)
//	p:<phase> number n of the phase's current payload, stored as "#n" in {P}:a:<job>
//	r:<phase> "<cycle>:<retry_count>": the highest retry_count (1 or more) of the phase
//	          recorded without a lease in that cycle, usually absent; a report of the
//	          pending attempt under its lease skips the duplicate probe of {P}:a:<job>
//	          when its retry_count is above it (report.go says why that suffices)
//
// A payload is stored once per job and change: an attempt reported
// without a payload, or with the same bytes as the phase's current payload,
// refers to the stored one by number.
//
// "Fields" are length-prefixed: "<decimal byte length>:<bytes>",
// concatenated ("10:extraction1:3" is extraction, 3). An attempt record
// has 17 fields: status (1 failed, 2 succeeded), finished µs, error type,
// error message, HTTP status, output, then the verdict — decision (1 retry,
// 2 give up, empty for a success), retryable (1/0), reason, next
// retry_count, delay ns, due (Unix ns) —, the job state a success left (its
// answer to a repeat), then, added by the script: sequence number (history
// order), started µs, worker id, payload number.
//
// A stats field is the outcome ("s" succeeded, "r" failed and retried, "g"
// failed and given up), "1" if retry_count > 0 else "0", the phase as a
// length-prefixed field, and the error type (failures); its value counts
// such attempts. One HINCRBY per attempt keeps every counter of
// store.PhaseStats. A phase counts at most store.MaxStatsErrorTypes error
// types per hour: the field "t0" and the phase as a length-prefixed field
// counts them, and a failure of a further type counts under
// store.OtherErrorType (capTypes in the script prelude; it runs only when a
// report creates a field, so it costs the common report nothing).
//
// An event message is one or more events: "s" phase-field due-µs-field
// (EventScheduled) or "r" lease-id-field (EventLeaseReleased).
//
// # Cost
//
// Measured with redis-server 7.0 on a unix socket (BenchmarkRecordFailure,
// BenchmarkRecordSuccess, BenchmarkClaim; commands from INFO commandstats,
// each command a script calls included):
//
//	first report     8  EVALSHA, HMGET job, HSET attempts, HSET job, ZADD due, ZADD index,
//	                    HINCRBY stats, PUBLISH (+ SADD phase once a minute per Store)
//	leased failure   9  EVALSHA, HMGET job, HSET attempts, ZREM lease, ZADD due, HSET job,
//	                    ZADD index (re-score), HINCRBY stats, PUBLISH
//	leased success   9  EVALSHA, HMGET job, HSET attempts, HSET job, ZREM lease, ZREM and
//	                    ZADD index (processing → completed), HINCRBY stats, PUBLISH
//	Claim            2 per call (ZRANGE of each phase's due set, EVALSHA) + 5 per task:
//	                    HMGET job, ZREM due, HSET job, ZADD lease, HGET payload
//	repeated report  3  EVALSHA, HMGET job, HMGET attempts
//
// An unleased report of an existing job, or one with a payload, probes the
// attempts hash too (+1). On issue 5's retry cycle (a first report, three
// claimed retries, two leased failures, a leased success per job) that is
// 12.65 commands per attempt, the dispatcher's own reads included.
//
// With 50 concurrent reporters (BenchmarkRecordFailureParallel) batching
// halves the client's CPU per report (about 60 → 30 µs) and cuts Redis's
// by 10–25% (per-request overhead); commands per report are unchanged.
//
// A pending retry (job, first attempt, due and index entries, 36-byte job
// id, typical labels and error message) takes about 1.35 KB of Redis
// memory besides its payload. MEMORY USAGE of its keys: the job hash 328
// bytes (listpack), the attempts hash 744 (hashtable, because a record
// and a payload exceed hash-max-listpack-value, 64), and an entry in each
// of two sorted sets (due, ListJobs index), about 145 bytes each at scale
// (skiplist). Raising hash-max-listpack-value to 1024 in redis.conf keeps
// the attempts hash in the compact encoding (552 bytes). Keeping a job's
// history in one string instead would take 552 bytes after the first
// write but, grown by APPEND, twice its length after the second (Redis
// preallocates: 1,584 bytes against the hash's 1,048); a list (RPUSH, no
// preallocation) 632 and 896.
package redisstore
