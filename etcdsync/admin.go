package etcdsync

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/limiter"
)

// Admin edits the buckets in etcd with the syncer's validation, so that
// what it writes is what every syncer applies. Its methods are safe for
// concurrent use.
type Admin struct {
	cli    *clientv3.Client
	prefix string // "<prefix>buckets/"
	// PageSize is the number of keys per request in ListBuckets
	// (see SyncerOptions.PageSize).
	PageSize int
}

// Bucket is one bucket as ListBuckets reads it.
type Bucket struct {
	ID          string
	Spec        Spec
	ModRevision int64
	// Err is set, and Spec is zero, for a value the syncers reject.
	Err error
}

// NewAdmin returns an admin for the buckets under prefix (DefaultPrefix if empty).
func NewAdmin(cli *clientv3.Client, prefix string) *Admin {
	return &Admin{cli: cli, prefix: BucketsPrefix(prefix), PageSize: 10_000}
}

// keyValue validates id and spec and returns the key and canonical value.
func (a *Admin) keyValue(id string, spec Spec) (string, string, error) {
	key, err := a.key(id)
	if err != nil {
		return "", "", err
	}
	val, err := EncodeSpec(spec)
	if err != nil {
		return "", "", fmt.Errorf("bucket %q: %w", id, err)
	}
	return key, string(val), nil
}

// key validates id and returns its key.
func (a *Admin) key(id string) (string, error) {
	if err := limiter.ValidateBucketID(id); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return a.prefix + id, nil
}

// CreateBucket creates a bucket, or fails with ErrBucketExists. The check
// and the write are one transaction (CreateRevision == 0), so two racing
// creators cannot both win.
func (a *Admin) CreateBucket(ctx context.Context, id string, spec Spec) error {
	key, val, err := a.keyValue(id, spec)
	if err != nil {
		return err
	}
	resp, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, val)).
		Commit()
	if err != nil {
		return fmt.Errorf("etcdsync: creating bucket %q: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %q", ErrBucketExists, id)
	}
	return nil
}

// UpdateBucket replaces an existing bucket's spec, or fails with ErrBucketNotFound.
func (a *Admin) UpdateBucket(ctx context.Context, id string, spec Spec) error {
	key, val, err := a.keyValue(id, spec)
	if err != nil {
		return err
	}
	resp, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpPut(key, val)).
		Commit()
	if err != nil {
		return fmt.Errorf("etcdsync: updating bucket %q: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %q", ErrBucketNotFound, id)
	}
	return nil
}

// CompareAndSwap writes spec only if the bucket's ModRevision is still
// modRevision (as returned by GetBucket or ListBuckets); 0 means "only if
// the bucket does not exist". Otherwise it fails with ErrRevisionMismatch.
func (a *Admin) CompareAndSwap(ctx context.Context, id string, spec Spec, modRevision int64) error {
	key, val, err := a.keyValue(id, spec)
	if err != nil {
		return err
	}
	resp, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRevision)).
		Then(clientv3.OpPut(key, val)).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("etcdsync: swapping bucket %q: %w", id, err)
	}
	if !resp.Succeeded {
		var cur int64
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			cur = kvs[0].ModRevision
		}
		return fmt.Errorf("%w: bucket %q is at revision %d, not %d", ErrRevisionMismatch, id, cur, modRevision)
	}
	return nil
}

// DeleteBucket deletes a bucket, or fails with ErrBucketNotFound.
func (a *Admin) DeleteBucket(ctx context.Context, id string) error {
	key, err := a.key(id)
	if err != nil {
		return err
	}
	resp, err := a.cli.Delete(ctx, key)
	if err != nil {
		return fmt.Errorf("etcdsync: deleting bucket %q: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: %q", ErrBucketNotFound, id)
	}
	return nil
}

// GetBucket returns a bucket's spec and ModRevision. A value in etcd that
// the syncers reject gives an error wrapping ErrInvalidSpec, with the
// ModRevision still set so that CompareAndSwap can repair it.
func (a *Admin) GetBucket(ctx context.Context, id string) (Spec, int64, error) {
	key, err := a.key(id)
	if err != nil {
		return Spec{}, 0, err
	}
	resp, err := a.cli.Get(ctx, key)
	if err != nil {
		return Spec{}, 0, fmt.Errorf("etcdsync: getting bucket %q: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return Spec{}, 0, fmt.Errorf("%w: %q", ErrBucketNotFound, id)
	}
	kv := resp.Kvs[0]
	spec, err := DecodeSpec(kv.Value)
	if err != nil {
		return Spec{}, kv.ModRevision, fmt.Errorf("bucket %q in etcd: %w", id, err)
	}
	return spec, kv.ModRevision, nil
}

// ListBuckets returns every bucket sorted by ID, read at one revision in
// pages. Invalid values are listed with Err set, so they can be found and fixed.
func (a *Admin) ListBuckets(ctx context.Context) ([]Bucket, error) {
	start, end := bucketRange(a.prefix)
	page := a.PageSize
	if page <= 0 {
		page = 10_000
	}
	var out []Bucket
	var rev int64
	for key := start; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := a.cli.Get(ctx, key, opts...)
		if err != nil {
			return nil, fmt.Errorf("etcdsync: listing buckets under %q: %w", a.prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			b := Bucket{ModRevision: kv.ModRevision}
			id, err := bucketID(a.prefix, kv.Key)
			b.ID = id
			if err != nil {
				b.ID, b.Err = string(kv.Key[len(a.prefix):]), err
			} else if b.Spec, err = DecodeSpec(kv.Value); err != nil {
				b.Err = err
			}
			out = append(out, b)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return out, nil // etcd returns keys in byte order, which is ID order
}
