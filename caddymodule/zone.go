package caddymodule

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/limiter"
)

// zonePool holds each zone's dynamic-bucket table across config reloads,
// keyed by zone name and template, so that `caddy reload` keeps every
// client's tokens. A reload that changes a zone's template starts that
// zone afresh: its buckets were sized for the old limit.
//
// # Notes
//
// A reload that changes only a zone's key policy keeps the table, as
// reloads promise to keep tokens (a WASM policy's config changes far more
// often than what its keys mean). Buckets of the old policy's keys fade as
// they refill; one config never mixes two policies (App.claimZone).
var zonePool = caddy.NewUsagePool()

// zoneKey identifies a zone table in zonePool. A reload that changes a
// zone's bucket cap also starts it afresh: the cap is fixed when the table
// is made.
type zoneKey struct {
	name       string
	config     limiter.Config
	maxBuckets int
}

func (k zoneKey) String() string {
	return fmt.Sprintf("zone %q %v burst %d max_buckets %d", k.name, k.config.Rate, k.config.Burst, k.maxBuckets)
}

// zoneClaim is what the handlers of one zone in one config must agree on:
// the template of the table's buckets and the policy that makes its keys
// (see zoneClaims.claim).
type zoneClaim struct {
	config     limiter.Config
	policy     string // keySpace of the policy
	maxBuckets int
	// logKey: some handler of the zone logs keys (log_key), so the admin
	// API may take a key in a URI, which Caddy logs (see serveKey).
	logKey bool
	// For the error when handlers disagree: the template as the config
	// wrote it ("rate 20/1s burst 40": config holds the reduced 1/50ms),
	// whether max_buckets was given, and where the handler is
	// ("Caddyfile:12"; empty where unknown, as when Caddy provisions).
	written       string
	maxBucketsSet bool
	where         string
}

// at appends where the claim was made, if known.
func (c zoneClaim) at(s string) string {
	if c.where == "" {
		return s
	}
	return s + " (" + c.where + ")"
}

func (c zoneClaim) maxBucketsText() string {
	if c.maxBucketsSet {
		return fmt.Sprintf("max_buckets %d", c.maxBuckets)
	}
	return fmt.Sprintf("the default max_buckets %d", c.maxBuckets)
}

// zoneState is one zone's table of dynamic buckets.
type zoneState struct {
	name       string
	maxBuckets int
	lim        *limiter.Limiter
	stop       chan struct{}
	done       chan struct{}
}

func (z *zoneState) stats() limiter.Stats { return z.lim.Stats() }

// Destruct implements caddy.Destructor: the last config using the zone is gone.
func (z *zoneState) Destruct() error {
	close(z.stop)
	<-z.done
	z.lim.Close()
	return nil
}

// loadZone returns the zone table for key, making it on first use. The
// caller must release it with zonePool.Delete(key).
func loadZone(key zoneKey, logger *zap.Logger) (*zoneState, error) {
	v, _, err := zonePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		z := &zoneState{
			name:       key.name,
			maxBuckets: key.maxBuckets,
			lim:        limiter.New(limiter.WithDefault(key.config), limiter.WithMaxBuckets(key.maxBuckets)),
			stop:       make(chan struct{}),
			done:       make(chan struct{}),
		}
		go z.watchCap(logger, capCheckInterval)
		return z, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*zoneState), nil
}

// capCheckInterval is how often a zone looks for buckets displaced at its
// cap: the warning says what happened within that time, at a cost of one
// pass over the shard counters. (A variable for tests.)
var capCheckInterval = 10 * time.Second

// watchCap warns, at most once per interval, while the zone is at its
// bucket cap and new keys displace buckets: a sign of a flood of invented
// keys, or of a cap too small for the real clients.
func (z *zoneState) watchCap(logger *zap.Logger, every time.Duration) {
	defer close(z.done)
	t := time.NewTicker(every)
	defer t.Stop()
	last := uint64(0)
	for {
		select {
		case <-z.stop:
			return
		case <-t.C:
		}
		st := z.lim.Stats()
		if st.Displaced > last {
			logger.Warn("zone at its bucket cap: new keys displace the buckets closest to full",
				zap.String("zone", z.name), zap.Int("max_buckets", z.maxBuckets),
				zap.Int64("buckets", st.DynamicBuckets), zap.Uint64("displaced", st.Displaced-last),
				zap.Duration("within", every))
		}
		last = st.Displaced
	}
}

// defaultMaxBuckets is a zone's bucket cap when the config sets none: a
// sixty-fourth of the memory the process may use, at about 32 bytes per
// bucket (a dynamic bucket's slot with its table's slack), and at least
// 65536. The memory is GOMEMLIMIT if set, else the machine's memory.
func defaultMaxBuckets() int {
	mem := debug.SetMemoryLimit(-1)
	if mem == math.MaxInt64 {
		mem = physicalMemory()
	}
	return max(1<<16, int(mem/64/32))
}

// physicalMemory reads MemTotal from /proc/meminfo; 4 GiB where there is
// none.
func physicalMemory() int64 {
	const fallback = 4 << 30
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return fallback
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil && len(f) == 2 && f[1] == "kB" {
				return kb << 10
			}
		}
	}
	return fallback
}
