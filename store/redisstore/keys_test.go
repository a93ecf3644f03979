package redisstore

import (
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	t.Parallel()
	k := newKeys("retryd")
	odd := newKeys("team-a:prod")
	for _, c := range []struct {
		name, got, want string
	}{
		{"job", k.job("job-1"), "{retryd}:j:job-1"},
		{"job with braces", k.job("{x}"), "{retryd}:j:{x}"},
		{"job with colons", k.job("a:b"), "{retryd}:j:a:b"},
		{"attempts", k.attempts("job-1"), "{retryd}:a:job-1"},
		{"due", k.due("extraction"), "{retryd}:due:extraction"},
		{"leases", k.leases(), "{retryd}:leases"},
		{"index processing", k.index(bucketProcessing, "chunking"), "{retryd}:idx:p:chunking"},
		{"index failed", k.index(bucketFailed, "kg_ingest"), "{retryd}:idx:f:kg_ingest"},
		{"index completed", k.index(bucketCompleted, "x"), "{retryd}:idx:c:x"},
		{"index canceled", k.index(bucketCanceled, "x"), "{retryd}:idx:x:x"},
		{"phases", k.phases(), "{retryd}:phases"},
		{"stats hour", k.statsHour(493_161), "{retryd}:stats:493161"},
		{"hours", k.hours(), "{retryd}:hours"},
		{"events", k.events(), "{retryd}:events"},
		{"sync", k.sync(), "{retryd}:sync"},
		{"other prefix", odd.job("j"), "{team-a:prod}:j:j"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
}

// TestKeysShareOneSlot checks the point of the hash tag: whatever the job id
// or phase, every key of a store hashes to the slot of its tag.
func TestKeysShareOneSlot(t *testing.T) {
	t.Parallel()
	k := newKeys("retryd")
	want := hashSlot("retryd")
	for _, key := range []string{
		k.job("{other}"), k.attempts("}{"), k.due("{phase}"), k.leases(),
		k.index(bucketProcessing, "{p}"), k.phases(), k.statsHour(1), k.hours(), k.events(),
	} {
		if got := hashSlot(key); got != want {
			t.Errorf("slot(%q) = %d, want %d (the slot of the tag)", key, got, want)
		}
	}
}

// hashSlot is Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag (the
// part between the first "{" and the next "}" when non-empty), mod 16384.
func hashSlot(key string) int {
	s := key
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			s = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

func TestPhaseCache(t *testing.T) {
	t.Parallel()
	c := newKeys("retryd").known
	const min = int64(60_000_000)
	if c.fresh("extraction", 0) {
		t.Fatal("fresh before any add")
	}
	c.added("extraction", 10)
	for _, n := range []struct {
		now  int64
		want bool
	}{{10, true}, {10 + min - 1, true}, {10 + min, false}, {9, false}} {
		if got := c.fresh("extraction", n.now); got != n.want {
			t.Errorf("fresh at %d = %v, want %v", n.now, got, n.want)
		}
	}
	if c.fresh("chunking", 10) {
		t.Error("another phase is fresh")
	}
	for i := range phaseCacheMax {
		c.added(strings.Repeat("x", i+1), 0)
	}
	if len(c.seen) != phaseCacheMax {
		t.Fatalf("%d phases remembered, want the bound %d", len(c.seen), phaseCacheMax)
	}
	c.added("extraction", 20)
	if !c.fresh("extraction", 20) {
		t.Error("a remembered phase is refreshed at the bound")
	}
	if newKeys("retryd").known == c {
		t.Error("two stores share a cache")
	}
}
