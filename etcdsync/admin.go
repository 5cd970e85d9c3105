package etcdsync

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/limiter"
)

// Admin edits the buckets and plans in etcd with the syncer's validation,
// so that what it writes is what every syncer applies. Its methods are
// safe for concurrent use.
type Admin struct {
	cli         *clientv3.Client
	prefix      string // "<prefix>buckets/"
	plansPrefix string // "<prefix>plans/"
	// PageSize, if set, is a fixed number of keys per list request;
	// otherwise pages are sized by bytes, as the syncer's are (see
	// SyncerOptions.PageBytes).
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

// Plan is one plan as ListPlans reads it.
type Plan struct {
	Name        string
	Spec        Spec
	ModRevision int64
	// Err is set, and Spec is zero, for a value the syncers reject.
	Err error
}

// NewAdmin returns an admin for the buckets and plans under prefix
// (DefaultPrefix if empty).
func NewAdmin(cli *clientv3.Client, prefix string) *Admin {
	return &Admin{cli: cli, prefix: BucketsPrefix(prefix), plansPrefix: PlansPrefix(prefix)}
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

// putBucket writes a bucket value if conds hold and, for a bucket on a
// plan, if the plan is in etcd: one transaction, so that no bucket is
// written naming a plan deleted meanwhile. On failure, bucketKVs holds the
// bucket's key (keys only), if it exists.
func (a *Admin) putBucket(ctx context.Context, action, id string, spec Spec, conds ...clientv3.Cmp) (ok bool, bucketKVs int, curRev int64, err error) {
	key, val, err := a.keyValue(id, spec)
	if err != nil {
		return false, 0, 0, err
	}
	cmps := conds
	orElse := []clientv3.Op{clientv3.OpGet(key, clientv3.WithKeysOnly())}
	if spec.Plan != "" {
		pk := a.plansPrefix + spec.Plan
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(pk), ">", 0))
		orElse = append(orElse, clientv3.OpGet(pk, clientv3.WithKeysOnly()))
	}
	resp, err := a.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, val)).Else(orElse...).Commit()
	if err != nil {
		return false, 0, 0, fmt.Errorf("etcdsync: %s bucket %q: %w", action, id, err)
	}
	if resp.Succeeded {
		return true, 0, 0, nil
	}
	if spec.Plan != "" && len(resp.Responses[1].GetResponseRange().GetKvs()) == 0 {
		return false, 0, 0, fmt.Errorf("%w: %q (bucket %q)", ErrPlanNotFound, spec.Plan, id)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) > 0 {
		curRev = kvs[0].ModRevision
	}
	return false, len(kvs), curRev, nil
}

// CreateBucket creates a bucket, or fails with ErrBucketExists. The check
// and the write are one transaction (CreateRevision == 0), so two racing
// creators cannot both win. A bucket on a plan (spec.Plan) fails with
// ErrPlanNotFound unless the plan is in etcd.
func (a *Admin) CreateBucket(ctx context.Context, id string, spec Spec) error {
	key, err := a.key(id)
	if err != nil {
		return err
	}
	ok, _, _, err := a.putBucket(ctx, "creating", id, spec, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %q", ErrBucketExists, id)
	}
	return nil
}

// UpdateBucket replaces an existing bucket's spec, or fails with
// ErrBucketNotFound (or ErrPlanNotFound, as CreateBucket).
func (a *Admin) UpdateBucket(ctx context.Context, id string, spec Spec) error {
	key, err := a.key(id)
	if err != nil {
		return err
	}
	ok, _, _, err := a.putBucket(ctx, "updating", id, spec, clientv3.Compare(clientv3.CreateRevision(key), ">", 0))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %q", ErrBucketNotFound, id)
	}
	return nil
}

// CompareAndSwap writes spec only if the bucket's ModRevision is still
// modRevision (as returned by GetBucket or ListBuckets); 0 means "only if
// the bucket does not exist". Otherwise it fails with ErrRevisionMismatch
// (or ErrPlanNotFound, as CreateBucket).
func (a *Admin) CompareAndSwap(ctx context.Context, id string, spec Spec, modRevision int64) error {
	key, err := a.key(id)
	if err != nil {
		return err
	}
	ok, _, cur, err := a.putBucket(ctx, "swapping", id, spec, clientv3.Compare(clientv3.ModRevision(key), "=", modRevision))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: bucket %q is at revision %d, not %d", ErrRevisionMismatch, id, cur, modRevision)
	}
	return nil
}

// PutBucket creates the bucket or replaces its value, whatever that value
// is (a value the syncers reject is repaired this way). A bucket on a plan
// fails with ErrPlanNotFound unless the plan is in etcd, checked in the
// same transaction as the write.
func (a *Admin) PutBucket(ctx context.Context, id string, spec Spec) error {
	_, _, _, err := a.putBucket(ctx, "putting", id, spec)
	return err
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
	var out []Bucket
	_, err := a.scan(ctx, a.prefix, func(kv *mvccpb.KeyValue) {
		b := Bucket{ModRevision: kv.ModRevision}
		id, err := bucketID(a.prefix, kv.Key)
		b.ID = id
		if err != nil {
			b.ID, b.Err = string(kv.Key[len(a.prefix):]), err
		} else if b.Spec, err = DecodeSpec(kv.Value); err != nil {
			b.Err = err
		}
		out = append(out, b)
	})
	return out, err // etcd returns keys in byte order, which is ID order
}

// scan reads every key under prefix at one revision, in pages, and
// returns that revision.
func (a *Admin) scan(ctx context.Context, prefix string, fn func(*mvccpb.KeyValue)) (int64, error) {
	pg := newPager(a.cli, prefix, clientv3.GetPrefixRangeEnd(prefix), 0, 0, a.PageSize)
	for !pg.done() {
		resp, err := pg.next(ctx)
		if err != nil {
			return 0, fmt.Errorf("etcdsync: listing %q: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			fn(kv)
		}
	}
	return pg.rev, nil
}

// planKey validates a plan name and returns its key.
func (a *Admin) planKey(name string) (string, error) {
	if err := limiter.ValidatePlanName(name); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return a.plansPrefix + name, nil
}

// PutPlan creates or changes a plan: every bucket on it, on every
// instance, takes the new config, keeping its tokens. spec must be local
// (see EncodePlan).
func (a *Admin) PutPlan(ctx context.Context, name string, spec Spec) error {
	key, err := a.planKey(name)
	if err != nil {
		return err
	}
	val, err := EncodePlan(spec)
	if err != nil {
		return fmt.Errorf("plan %q: %w", name, err)
	}
	if _, err := a.cli.Put(ctx, key, string(val)); err != nil {
		return fmt.Errorf("etcdsync: putting plan %q: %w", name, err)
	}
	return nil
}

// GetPlan returns a plan's spec and ModRevision, or fails with
// ErrPlanNotFound. A value the syncers reject gives an error wrapping
// ErrInvalidSpec, with the ModRevision still set.
func (a *Admin) GetPlan(ctx context.Context, name string) (Spec, int64, error) {
	key, err := a.planKey(name)
	if err != nil {
		return Spec{}, 0, err
	}
	resp, err := a.cli.Get(ctx, key)
	if err != nil {
		return Spec{}, 0, fmt.Errorf("etcdsync: getting plan %q: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Spec{}, 0, fmt.Errorf("%w: %q", ErrPlanNotFound, name)
	}
	kv := resp.Kvs[0]
	spec, err := DecodePlan(kv.Value)
	if err != nil {
		return Spec{}, kv.ModRevision, fmt.Errorf("plan %q in etcd: %w", name, err)
	}
	return spec, kv.ModRevision, nil
}

// ListPlans returns every plan sorted by name, read at one revision.
// Invalid values are listed with Err set.
func (a *Admin) ListPlans(ctx context.Context) ([]Plan, error) {
	var out []Plan
	_, err := a.scan(ctx, a.plansPrefix, func(kv *mvccpb.KeyValue) {
		p := Plan{ModRevision: kv.ModRevision}
		name, err := planName(a.plansPrefix, kv.Key)
		p.Name = name
		if err != nil {
			p.Name, p.Err = string(kv.Key[len(a.plansPrefix):]), err
		} else if p.Spec, err = DecodePlan(kv.Value); err != nil {
			p.Err = err
		}
		out = append(out, p)
	})
	return out, err
}

// maxPlanUsersNamed bounds the bucket IDs an ErrPlanInUse error names.
const maxPlanUsersNamed = 3

// deletePlanTries bounds DeletePlan's scans when buckets keep changing
// under it.
const deletePlanTries = 3

// DeletePlan deletes a plan, or fails with ErrPlanNotFound. Unless force
// is set, it refuses with ErrPlanInUse while any bucket value names the
// plan: it reads every bucket value to find out (an admin operation, not
// a fast one), and deletes only if no bucket changed since that read, in
// one transaction; if buckets keep changing, it gives up with
// ErrRevisionMismatch. With force, it deletes at once; the syncers then
// keep the plan in force for the buckets still on it (see Spec).
func (a *Admin) DeletePlan(ctx context.Context, name string, force bool) error {
	key, err := a.planKey(name)
	if err != nil {
		return err
	}
	if force {
		resp, err := a.cli.Delete(ctx, key)
		if err != nil {
			return fmt.Errorf("etcdsync: deleting plan %q: %w", name, err)
		}
		if resp.Deleted == 0 {
			return fmt.Errorf("%w: %q", ErrPlanNotFound, name)
		}
		return nil
	}
	for range deletePlanTries {
		users, n, rev, err := a.planUsers(ctx, name)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: %q is named by %d buckets (%q...); move them to another plan first, or force the delete", ErrPlanInUse, name, n, users)
		}
		resp, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(a.prefix), "<", rev+1).WithPrefix(),
				clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
			Then(clientv3.OpDelete(key)).
			Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
			Commit()
		if err != nil {
			return fmt.Errorf("etcdsync: deleting plan %q: %w", name, err)
		}
		if resp.Succeeded {
			return nil
		}
		if len(resp.Responses[0].GetResponseRange().GetKvs()) == 0 {
			return fmt.Errorf("%w: %q", ErrPlanNotFound, name)
		}
		// A bucket changed since the scan: scan again.
	}
	return fmt.Errorf("%w: buckets kept changing while checking that none names plan %q", ErrRevisionMismatch, name)
}

// planUsers reads every bucket value and returns how many name plan (and
// the first few IDs), with the revision read.
func (a *Admin) planUsers(ctx context.Context, plan string) (named []string, n int, rev int64, err error) {
	cache := map[string]string{} // value -> plan it names; most values repeat
	rev, err = a.scan(ctx, a.prefix, func(kv *mvccpb.KeyValue) {
		p, ok := cache[string(kv.Value)]
		if !ok {
			spec, _ := DecodeSpec(kv.Value)
			p = spec.Plan
			if len(cache) < decodeCacheSize {
				cache[string(kv.Value)] = p
			}
		}
		if p == plan {
			if n++; n <= maxPlanUsersNamed {
				named = append(named, string(kv.Key[len(a.prefix):]))
			}
		}
	})
	return named, n, rev, err
}
