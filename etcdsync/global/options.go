package global

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/limiter"
)

// Defaults for Options.
const (
	// DefaultSyncInterval is how often an instance reports its demand. One
	// second is the shortest interval at which a thousand instances still
	// make only a thousand small etcd writes per second.
	DefaultSyncInterval = time.Second
	// DefaultLeaseTTL is how long a dead instance keeps its share before the
	// others take it back. Five seconds rides out a GC pause or an etcd
	// leader election (about 1 s with etcd's defaults) without flapping.
	DefaultLeaseTTL = 5 * time.Second
	// DefaultMaxReportBytes bounds one demand report: the most any member
	// reads (maxReportBytes).
	DefaultMaxReportBytes = maxReportBytes

	// minSyncInterval keeps a typo ("1ms") from turning into a write storm.
	minSyncInterval = 10 * time.Millisecond
	// minLeaseTTL is etcd's granularity: TTLs are whole seconds, and a
	// 1-second lease expires between two keepalives on a busy machine.
	minLeaseTTL = 2 * time.Second
	// minReportBytes holds at least a few dozen of the longest bucket IDs.
	minReportBytes = 16 << 10
	// maxReportBytes is the largest report a member writes and the largest
	// it reads: a larger value under the members prefix is ignored
	// undecoded, so a stray key cannot cost every instance memory. It is a
	// constant, not an option, because members reading with different
	// bounds would not agree on the split. 512 KiB is a third of etcd's
	// default 1.5 MiB request limit, so reports never fail on size, and
	// holds the ~9,000 to ~21,000 busiest buckets of an instance (58 to 25
	// bytes per entry); at ~1 us per bucket and member, more would make
	// every member change cost seconds of CPU. A full report decodes to
	// 0.8 to 1.2 MB, so the reports cost at most that per member.
	maxReportBytes = 512 << 10
	membersDir     = "members/"
)

// Options configure a Coordinator.
type Options struct {
	// Prefix is the etcd key prefix shared with etcdsync (DefaultPrefix if
	// empty); member keys are <Prefix>members/<InstanceID>.
	Prefix string
	// InstanceID names this instance among its peers; it must be unique in
	// the fleet and stable across restarts (a hostname, a pod name). It
	// follows the bucket ID rules and may not contain '/'.
	InstanceID string
	// SyncInterval is how often this instance reports its demand; zero
	// means DefaultSyncInterval. Demand that moves is reported at once,
	// checked every twentieth of it.
	SyncInterval time.Duration
	// LeaseTTL is the lease time to live, in whole seconds; zero means
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// MaxReportBytes bounds one demand report, from 16 KiB to 512 KiB
	// (members ignore larger reports); zero means DefaultMaxReportBytes.
	// Buckets beyond it are left out of the report, lowest demand first
	// (see Status.OmittedBuckets).
	MaxReportBytes int
	// Connect, used when New gets a nil client, makes the client before the
	// first session and is retried like any other session failure
	// (meanwhile buckets get safe shares). The caller owns the client it
	// returns: pass the Get of the etcdsync.LazyClient the Syncer shares.
	Connect func(ctx context.Context) (*clientv3.Client, error)
	// ExpectedMembers is the member count assumed while none is known yet
	// (before the first join, e.g. a cold start while etcd is down): the
	// instance then enforces rate/ExpectedMembers. Zero means 1, i.e. the
	// whole rate until the fleet is known; set it to the fleet size to stay
	// under the global rate even then.
	ExpectedMembers int
	// Logger receives state changes (join, fallback, rejoin); nil means none.
	Logger *zap.Logger
}

func (o *Options) setDefaults() error {
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.MaxReportBytes == 0 {
		o.MaxReportBytes = DefaultMaxReportBytes
	}
	if o.ExpectedMembers == 0 {
		o.ExpectedMembers = 1
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := limiter.ValidateBucketID(o.InstanceID); err != nil || strings.Contains(o.InstanceID, "/") {
		return fmt.Errorf("%w: InstanceID %q must be a non-empty name without '/' or control characters", ErrInvalidOptions, o.InstanceID)
	}
	if o.SyncInterval < minSyncInterval {
		return fmt.Errorf("%w: SyncInterval %v is below %v", ErrInvalidOptions, o.SyncInterval, minSyncInterval)
	}
	if o.LeaseTTL < minLeaseTTL || o.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("%w: LeaseTTL %v must be whole seconds, at least %v", ErrInvalidOptions, o.LeaseTTL, minLeaseTTL)
	}
	if o.SyncInterval > o.LeaseTTL/2 {
		// A member must report, and see the others' reports, several times
		// per lease; otherwise a live member looks no different from a dead one.
		return fmt.Errorf("%w: SyncInterval %v must be at most half the LeaseTTL %v", ErrInvalidOptions, o.SyncInterval, o.LeaseTTL)
	}
	if o.MaxReportBytes < minReportBytes || o.MaxReportBytes > maxReportBytes {
		return fmt.Errorf("%w: MaxReportBytes %d is not in %d..%d", ErrInvalidOptions, o.MaxReportBytes, minReportBytes, maxReportBytes)
	}
	if o.ExpectedMembers < 0 {
		return fmt.Errorf("%w: ExpectedMembers %d is negative", ErrInvalidOptions, o.ExpectedMembers)
	}
	return nil
}

// MembersPrefix returns the key prefix of the member keys:
// "<prefix>members/", beside etcdsync's "<prefix>buckets/".
func MembersPrefix(prefix string) string {
	// etcdsync owns the prefix normalisation; its buckets dir is our sibling.
	return strings.TrimSuffix(etcdsync.BucketsPrefix(prefix), "buckets/") + membersDir
}

// MemberKey returns the key of one instance: "<prefix>members/<instanceID>".
func MemberKey(prefix, instanceID string) string { return MembersPrefix(prefix) + instanceID }
