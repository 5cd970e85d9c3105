package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"

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

// zoneKey identifies a zone table in zonePool.
type zoneKey struct {
	name   string
	config limiter.Config
}

func (k zoneKey) String() string {
	return fmt.Sprintf("zone %q %v burst %d", k.name, k.config.Rate, k.config.Burst)
}

// zoneClaim is what the handlers of one zone in one config must agree on:
// the template of the table's buckets and the policy that makes its keys
// (see App.claimZone).
type zoneClaim struct {
	config limiter.Config
	policy string // keySpace of the policy
}

// zoneState is one zone's table of dynamic buckets.
type zoneState struct {
	name string
	lim  *limiter.Limiter
}

func (z *zoneState) stats() limiter.Stats { return z.lim.Stats() }

// Destruct implements caddy.Destructor: the last config using the zone is gone.
func (z *zoneState) Destruct() error {
	z.lim.Close()
	return nil
}

// loadZone returns the zone table for key, making it on first use. The
// caller must release it with zonePool.Delete(key).
func loadZone(key zoneKey) (*zoneState, error) {
	v, _, err := zonePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &zoneState{name: key.name, lim: limiter.New(limiter.WithDefault(key.config))}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*zoneState), nil
}
