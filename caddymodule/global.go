package caddymodule

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgelimit/edgelimit/etcdsync"
	"github.com/edgelimit/edgelimit/etcdsync/global"
)

// GlobalConfig configures global buckets (scope "global" in etcd): their
// rate is shared by every instance through etcd leases (etcdsync/global).
// It is on whenever etcd is configured, because without it a global bucket
// would be enforced in full by every instance, admitting N times its rate.
type GlobalConfig struct {
	// Disabled turns global coordination off: global buckets are then
	// enforced locally, in full, by each instance.
	Disabled bool `json:"disabled,omitempty"`
	// SyncInterval is how often this instance reports its demand; 1s if zero.
	SyncInterval caddy.Duration `json:"sync_interval,omitempty"`
	// LeaseTTL is how long a dead instance keeps its share; 5s if zero.
	LeaseTTL caddy.Duration `json:"lease_ttl,omitempty"`
	// ExpectedMembers is the fleet size assumed before the first join
	// (cold start with etcd down); 1 if zero.
	ExpectedMembers int `json:"expected_members,omitempty"`
}

func (g *GlobalConfig) enabled() bool { return g == nil || !g.Disabled }

// newCoordinator wraps the plain limiter target so that global buckets get
// this instance's share.
func newCoordinator(connect func(context.Context) (*clientv3.Client, error), inner etcdsync.Target, s *appState, prefix string, g *GlobalConfig, logger *zap.Logger) (*global.Coordinator, error) {
	opts := global.Options{
		Prefix:     prefix,
		InstanceID: s.instanceID,
		Logger:     logger.Named("global"),
		Connect:    connect,
	}
	if g != nil {
		opts.SyncInterval = time.Duration(g.SyncInterval)
		opts.LeaseTTL = time.Duration(g.LeaseTTL)
		opts.ExpectedMembers = g.ExpectedMembers
	}
	c, err := global.New(nil, inner, s.explicit, opts)
	if err != nil {
		return nil, fmt.Errorf("edge_limit: global limits for instance %q: %w", s.instanceID, err)
	}
	return c, nil
}

// fillGlobalMetrics puts the coordinator's figures into m, at a cost that
// does not grow with the number of global buckets.
func fillGlobalMetrics(m *stateMetrics, c *global.Coordinator) {
	st := c.Summary()
	m.hasGlobal = true
	m.unleasedKeys, m.ignoredReports = float64(st.UnleasedKeys), float64(st.IgnoredReports)
	m.ignoredWrites = float64(st.IgnoredWrites)
	m.globalState, m.globalMembers = st.State, float64(len(st.Members))
	m.eventWrites = float64(st.EventWrites)
	m.releasedTokens, m.creditedTokens = float64(st.ReleasedTokens), float64(st.CreditedTokens)
}
