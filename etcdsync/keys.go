package etcdsync

import (
	"bytes"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/limiter"
)

// DefaultPrefix is the key prefix when none is configured.
const DefaultPrefix = "/edgelimit/"

// bucketsDir is the sub-prefix of explicit buckets. Other kinds of keys
// (etcdsync/global's members/) live beside it, so the syncer never sees them.
const bucketsDir = "buckets/"

// plansDir is the sub-prefix of plans, the configs that buckets name by
// reference.
const plansDir = "plans/"

// normPrefix returns the prefix with a trailing slash, DefaultPrefix if empty.
func normPrefix(prefix string) string {
	if prefix == "" {
		return DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

// BucketsPrefix returns the key prefix under which explicit buckets live:
// "<prefix>buckets/".
func BucketsPrefix(prefix string) string { return normPrefix(prefix) + bucketsDir }

// BucketKey returns the etcd key of bucket id: "<prefix>buckets/<id>".
func BucketKey(prefix, id string) string { return BucketsPrefix(prefix) + id }

// PlansPrefix returns the key prefix under which plans live:
// "<prefix>plans/".
func PlansPrefix(prefix string) string { return normPrefix(prefix) + plansDir }

// PlanKey returns the etcd key of plan name: "<prefix>plans/<name>".
func PlanKey(prefix, name string) string { return PlansPrefix(prefix) + name }

// planName extracts and validates the plan name of a key under plansPrefix.
func planName(plansPrefix string, key []byte) (string, error) {
	if !bytes.HasPrefix(key, []byte(plansPrefix)) {
		return "", fmt.Errorf("%w: key %q is outside %q", ErrInvalidSpec, key, plansPrefix)
	}
	name := string(key[len(plansPrefix):])
	if err := limiter.ValidatePlanName(name); err != nil {
		return "", fmt.Errorf("%w: key %q: %w", ErrInvalidSpec, key, err)
	}
	return name, nil
}

// bucketRange returns the [start, end) key range of every bucket.
func bucketRange(bucketsPrefix string) (string, string) {
	return bucketsPrefix, clientv3.GetPrefixRangeEnd(bucketsPrefix)
}

// bucketID extracts and validates the bucket ID of a key under bucketsPrefix.
func bucketID(bucketsPrefix string, key []byte) (string, error) {
	if !bytes.HasPrefix(key, []byte(bucketsPrefix)) {
		return "", fmt.Errorf("%w: key %q is outside %q", ErrInvalidSpec, key, bucketsPrefix)
	}
	// A string of the ID bytes alone: the syncer keeps it for as long as
	// the bucket exists, and the prefix would double its size.
	id := string(key[len(bucketsPrefix):])
	if err := limiter.ValidateBucketID(id); err != nil {
		return "", fmt.Errorf("%w: key %q: %w", ErrInvalidSpec, key, err)
	}
	return id, nil
}
