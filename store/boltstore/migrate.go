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

// migrate brings a file of schema from (1 or 2) to schemaVersion, chunk
// keys per transaction: from schema 1 it moves the jobs, attempts and
// payloads into the job bucket and deletes the emptied buckets; from
// schema 2 it deletes the listing's "any state" entries. Each transaction
// moves (or deletes) its keys atomically, so a migration that is
// interrupted, by a crash or a kill, leaves a file that is still of the old
// schema with part of its keys done, and the next Open carries on where it
// stopped. Records themselves are unchanged (codec.go versions them).
func migrate(db *bolt.DB, from byte, chunk int) error {
	if from < 2 {
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
		if err := setSchema(db, 2); err != nil {
			return err
		}
	}
	for {
		deleted, err := dropListAny(db, chunk)
		if err != nil {
			return fmt.Errorf("migrate schema 2 listing: %w", err)
		}
		if deleted == 0 {
			break
		}
	}
	return setSchema(db, schemaVersion)
}

func setSchema(db *bolt.DB, v byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{v})
	})
}

// dropListAny deletes up to chunk of schema 2's "any state" listing
// entries in one transaction and returns how many.
func dropListAny(db *bolt.DB, chunk int) (int, error) {
	deleted := 0
	err := db.Update(func(tx *bolt.Tx) error {
		deleted = 0
		b := tx.Bucket(bucketListing)
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.Seek([]byte{v2ListAny}); k != nil && k[0] == v2ListAny && len(keys) < chunk; k, _ = c.Next() {
			keys = append(keys, slices.Clone(k))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		deleted = len(keys)
		return nil
	})
	return deleted, err
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
