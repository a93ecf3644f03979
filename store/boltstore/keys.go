package boltstore

import (
	"encoding/binary"
	"fmt"

	"github.com/retryd/retryd/store"
)

// The buckets and their keys. Every composite key is built and parsed here.
//
//	job       <job> 0x00                                      → jobRecord
//	          <job> 0x01 <cycle:4> <len phase> <phase> <retry:4> → attemptRecord
//	          <job> 0x02 <phase>                              → 0x01 + payload bytes
//	due       <len phase> <phase>  <due µs:8>  <job id>       → empty
//	leases    <expiry µs:8>  <job id>                         → empty
//	listing   <state:1>  <updated µs:8>  <job id>             → empty
//	stats     <hour µs:8>  <phase>                            → statsRecord
//	meta      "schema"                                        → schema version
//
// <job> is the job id prefixed with its length (a uvarint), so that no job's
// prefix is a prefix of another's; <len phase> likewise for phases. A job's
// record, attempts and payloads are neighbours in one bucket: a report that
// writes all three rewrites one root-to-leaf path of one B+tree (usually
// one leaf), where three buckets (schema 1: jobs, attempts, payloads, each
// keyed the same way without the kind byte) took three paths. Numbers are
// big-endian so that byte order is numeric order; times are signed
// microseconds with the sign bit flipped, which keeps that order for any
// time. The listing holds one entry per job, under its state; ListJobs of
// every state merges the four states' ranges. (Schema 2 kept a second entry
// under state 0, "any state", which every report moved too: two more
// changes, a leaf or two more per report, and 70 bytes per job.)
var (
	bucketJob     = []byte("job")
	bucketDue     = []byte("due")
	bucketLeases  = []byte("leases")
	bucketListing = []byte("listing")
	bucketStats   = []byte("stats")
	bucketMeta    = []byte("meta")

	allBuckets = [][]byte{bucketJob, bucketDue, bucketLeases, bucketListing, bucketStats, bucketMeta}

	keySchema = []byte("schema")
)

// The kinds of key of a job in the job bucket, after its <job> prefix.
const (
	kindRecord  = 0
	kindAttempt = 1
	kindPayload = 2
)

// schemaVersion is the layout above. Open refuses a file with a newer one
// and migrates one with an older one (migrate.go).
const schemaVersion = 3

// v2ListAny is the state byte of schema 2's second listing entry of every
// job, under "any state"; schema 3 dropped them (migrate.go).
const v2ListAny = 0

// payloadPresent prefixes stored payloads so that an empty payload is told
// apart from none (bbolt may return nil for an empty value).
const payloadPresent = 1

func appendTime(b []byte, us int64) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(us)^(1<<63))
}

func readTime(b []byte) int64 { return int64(binary.BigEndian.Uint64(b) ^ (1 << 63)) }

func appendLenPrefixed(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// jobPrefix is the prefix of every key of job id in the job bucket.
func jobPrefix(id string) []byte { return appendLenPrefixed(make([]byte, 0, len(id)+2), id) }

// jobKey is the key of job id's record.
func jobKey(id string) []byte {
	return append(appendLenPrefixed(make([]byte, 0, len(id)+2), id), kindRecord)
}

// attemptsPrefix is the prefix of the keys of job id's attempts.
func attemptsPrefix(id string) []byte {
	return append(appendLenPrefixed(make([]byte, 0, len(id)+2), id), kindAttempt)
}

func attemptKey(id string, cycle uint32, phase string, retry uint32) []byte {
	k := append(appendLenPrefixed(make([]byte, 0, len(id)+len(phase)+13), id), kindAttempt)
	k = binary.BigEndian.AppendUint32(k, cycle)
	k = appendLenPrefixed(k, phase)
	return binary.BigEndian.AppendUint32(k, retry)
}

// attemptKeyPhase returns the phase of an attempt key of job id.
func attemptKeyPhase(id string, k []byte) (string, error) {
	rest := k[len(attemptsPrefix(id)):]
	if len(rest) < 4 {
		return "", fmt.Errorf("%w: attempt key of %q is too short", errCorrupt, id)
	}
	rest = rest[4:]
	n, w := binary.Uvarint(rest)
	if w <= 0 || uint64(len(rest)-w) != n+4 {
		return "", fmt.Errorf("%w: attempt key of %q has a bad phase", errCorrupt, id)
	}
	return string(rest[w : w+int(n)]), nil
}

func payloadKey(id, phase string) []byte {
	k := append(appendLenPrefixed(make([]byte, 0, len(id)+len(phase)+3), id), kindPayload)
	return append(k, phase...)
}

// duePrefix is the prefix of phase's entries in the due index.
func duePrefix(phase string) []byte { return appendLenPrefixed(make([]byte, 0, len(phase)+10), phase) }

func dueKey(phase string, dueUS int64, id string) []byte {
	return append(appendTime(duePrefix(phase), dueUS), id...)
}

func leaseKey(expiresUS int64, id string) []byte {
	return append(appendTime(make([]byte, 0, 8+len(id)), expiresUS), id...)
}

func listingKey(state store.JobState, updatedUS int64, id string) []byte {
	return append(appendTime([]byte{byte(state)}, updatedUS), id...)
}

func statsKey(hourUS int64, phase string) []byte {
	return append(appendTime(make([]byte, 0, 8+len(phase)), hourUS), phase...)
}

// hourOf rounds Unix microseconds down to the start of their hour.
func hourOf(us int64) int64 {
	hour := store.StatsBucket.Microseconds()
	h := us - us%hour
	if us < 0 && us%hour != 0 {
		h -= hour
	}
	return h
}
