package boltstore

import (
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Schema 1 kept a job's record, attempts and payloads in three buckets,
// keyed by the job id (jobs) and by <job> + the rest of the key (attempts,
// payloads). Schema 2 keeps them in the job bucket under <job> + a kind
// byte + the same rest (keys.go).
var (
	v1BucketJobs     = []byte("jobs")
	v1BucketAttempts = []byte("attempts")
	v1BucketPayloads = []byte("payloads")
)

// migrateChunk is how many keys one migration transaction moves: enough to
// make the fsyncs cheap, few enough that a transaction's dirty pages (and
// the memory they take) stay small whatever the file's size.
const migrateChunk = 10_000

// migrateV1 moves a schema 1 file's jobs, attempts and payloads into the
// job bucket, chunk keys per transaction, deletes the emptied buckets and
// records schema 2. Each transaction moves its keys (puts them under their
// new key and deletes the old one) atomically, so a migration that is
// interrupted, by a crash or a kill, leaves a file that is still schema 1
// with part of its keys moved, and the next Open carries on where it
// stopped. Records themselves are unchanged (codec.go versions them).
func migrateV1(db *bolt.DB, chunk int) error {
	for _, m := range []struct {
		bucket []byte
		kind   byte
	}{{v1BucketJobs, kindRecord}, {v1BucketAttempts, kindAttempt}, {v1BucketPayloads, kindPayload}} {
		for {
			moved, err := migrateStep(db, m.bucket, m.kind, chunk)
			if err != nil {
				return fmt.Errorf("migrate schema 1 bucket %q: %w", m.bucket, err)
			}
			if moved == 0 {
				break
			}
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{schemaVersion})
	})
}

// migrateStep moves up to chunk keys of a schema 1 bucket into the job
// bucket in one transaction, and deletes the bucket once it is empty. It
// returns how many keys it moved: 0 when the bucket is gone.
func migrateStep(db *bolt.DB, bucket []byte, kind byte, chunk int) (int, error) {
	moved := 0
	err := db.Update(func(tx *bolt.Tx) error {
		moved = 0
		old := tx.Bucket(bucket)
		if old == nil {
			return nil
		}
		dst := tx.Bucket(bucketJob)
		var keys [][]byte
		c := old.Cursor()
		for k, v := c.First(); k != nil && len(keys) < chunk; k, v = c.Next() {
			nk, err := v1Key(k, kind)
			if err != nil {
				return err
			}
			if err := dst.Put(nk, slices.Clone(v)); err != nil {
				return err
			}
			keys = append(keys, slices.Clone(k))
		}
		if len(keys) == 0 {
			return tx.DeleteBucket(bucket)
		}
		for _, k := range keys {
			if err := old.Delete(k); err != nil {
				return err
			}
		}
		moved = len(keys)
		return nil
	})
	return moved, err
}

// v1Key turns a schema 1 key of kind into its schema 2 key: a job id
// becomes <job> 0x00; <job> <rest> of an attempt or payload becomes
// <job> <kind> <rest>.
func v1Key(k []byte, kind byte) ([]byte, error) {
	if kind == kindRecord {
		return jobKey(string(k)), nil
	}
	n, w := binary.Uvarint(k)
	if w <= 0 || uint64(len(k)-w) < n {
		return nil, fmt.Errorf("%w: schema 1 key %q has a bad job id length", errCorrupt, k)
	}
	end := w + int(n)
	nk := make([]byte, 0, len(k)+1)
	nk = append(append(append(nk, k[:end]...), kind), k[end:]...)
	return nk, nil
}
