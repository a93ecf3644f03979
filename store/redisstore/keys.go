package redisstore

import (
	"strconv"
	"sync"
)

// keys builds every Redis key and channel name of one store. All of them
// start with the hash tag "{<prefix>}", so that they live in one Redis
// Cluster hash slot and every script may touch any of them (DESIGN.md,
// invariant 4). The prefix itself never contains braces (Options.validate),
// so the tag is always the first "{...}" of the key. The layout is described
// in doc.go.
type keys struct {
	tag string // "{<prefix>}"
	// known remembers which phases are in the phase set {P}:phases, so
	// that a report need not add its phase again (every Store has its own).
	known *phaseCache
}

func newKeys(prefix string) keys {
	return keys{tag: "{" + prefix + "}", known: &phaseCache{seen: map[string]int64{}}}
}

// job is the hash holding a job's record.
func (k keys) job(id string) string { return k.tag + ":j:" + id }

// attempts is the hash holding a job's attempts and payload blobs.
func (k keys) attempts(id string) string { return k.tag + ":a:" + id }

// due is the sorted set of the attempts of phase scheduled and not leased.
func (k keys) due(phase string) string { return k.tag + ":due:" + phase }

// leases is the sorted set of leased attempts by expiry.
func (k keys) leases() string { return k.tag + ":leases" }

// index is the ListJobs index of the jobs of bucket whose current phase is phase.
func (k keys) index(b bucket, phase string) string {
	return k.tag + ":idx:" + string(b) + ":" + phase
}

// phases is the set of every phase that has been a job's current phase.
func (k keys) phases() string { return k.tag + ":phases" }

// statsHour is the hash of the counters of one hour (Unix hours).
func (k keys) statsHour(hour int64) string {
	return k.tag + ":stats:" + strconv.FormatInt(hour, 10)
}

// hours is the sorted set of the hours that have a stats hash.
func (k keys) hours() string { return k.tag + ":hours" }

// sync is the hash whose counter strict durability increments before WAIT (server.go).
func (k keys) sync() string { return k.tag + ":sync" }

// events is the Pub/Sub channel of schedule and lease events.
func (k keys) events() string { return k.tag + ":events" }

// bucket partitions the ListJobs indexes: every job is in exactly one
// bucket, derived from its state alone. A processing job stays in one index
// whatever its pending attempt does (scheduled, leased, none), so that a
// claim or a report moves no index entry: a report re-scores the entry with
// one ZADD, and ListJobs applies the "in backoff" filter to the jobs it
// reads (store.Job.InBackoff).
type bucket string

const (
	bucketProcessing bucket = "p"
	bucketFailed     bucket = "f"
	bucketCompleted  bucket = "c"
	bucketCanceled   bucket = "x"
)

// phaseCache spares the SADD of a report's phase to {P}:phases, one of a
// first report's commands, when this Store added it recently. The set
// never shrinks (Expire and the admin scripts only ever add to it), so a
// phase once added stays, unless the data itself is lost (a Redis
// restarted without persistence, a flushed database). A confirmation
// therefore only holds for phaseRefresh of report time: the next report
// after it adds the phase again, so that even then every phase of a
// current job is back in the set within a minute (it holds phase names,
// not jobs: one SADD makes all the phase's jobs listable again). The store
// reads no clock; the time is the reports' Now.
type phaseCache struct {
	mu   sync.Mutex
	seen map[string]int64 // phase → report time (µs) of its last SADD
}

const (
	// phaseRefresh is how long a confirmation holds, in µs of report time.
	phaseRefresh = int64(60_000_000)
	// phaseCacheMax bounds the phases remembered: phase names come from
	// clients, and a client inventing them must not grow the process
	// without bound; beyond it, reports of other phases simply SADD.
	phaseCacheMax = 1024
)

// fresh reports whether phase was added to the set within phaseRefresh
// before now (a report time that goes back counts as not fresh).
func (c *phaseCache) fresh(phase string, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.seen[phase]
	return ok && now >= at && now-at < phaseRefresh
}

// added records that a script added phase to the set at report time now.
func (c *phaseCache) added(phase string, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[phase]; ok || len(c.seen) < phaseCacheMax {
		c.seen[phase] = now
	}
}
