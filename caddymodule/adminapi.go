package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/policy"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// Admin API paths. They sit on Caddy's admin listener, behind its access
// controls (origins, remote admin's client certificates), like /config/.
const (
	adminPrefix  = "/edge-limit/"
	adminStatus  = adminPrefix + "status"
	adminBucket  = adminPrefix + "buckets"
	adminBuckets = adminBucket + "/"
	adminKeys    = adminPrefix + "keys/"
)

// AdminAPI serves the live state of the running edge_limit app on Caddy's
// admin API: GET /edge-limit/status, POST /edge-limit/buckets (the bucket
// ID in the body) and /edge-limit/keys/<zone> (the key in a POST body, or
// in ?key= where the zone logs keys). It reads the active config's state;
// it changes nothing, and it lists no client key: a key or a bucket ID is
// looked up only when given. IDs and keys travel in bodies because Caddy
// logs every admin request's URI at info, and a bucket ID can be an API key.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.edge_limit",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: adminStatus, Handler: caddy.AdminHandlerFunc(serveStatus)},
		{Pattern: adminBucket, Handler: caddy.AdminHandlerFunc(serveBucket)},
		{Pattern: adminBuckets, Handler: caddy.AdminHandlerFunc(serveBucket)},
		{Pattern: adminKeys, Handler: caddy.AdminHandlerFunc(serveKey)},
	}
}

// configInfo is a bucket config as the admin API shows it.
type configInfo struct {
	Rate          string  `json:"rate"` // "100/1s", exact
	RatePerSecond float64 `json:"rate_per_second"`
	Burst         int64   `json:"burst"`
	Shadow        bool    `json:"shadow,omitempty"`
}

func newConfigInfo(c limiter.Config) configInfo {
	return configInfo{Rate: c.Rate.String(), RatePerSecond: c.Rate.PerSecondFloat(), Burst: c.Burst, Shadow: c.Shadow}
}

// bucketState is a bucket's state now.
type bucketState struct {
	Config           configInfo `json:"config"`
	Tokens           int64      `json:"tokens"`
	UntilFullSeconds float64    `json:"until_full_seconds"`
}

func newBucketState(st limiter.BucketState) bucketState {
	return bucketState{Config: newConfigInfo(st.Config), Tokens: st.Tokens, UntilFullSeconds: st.UntilFull.Seconds()}
}

// bucketInfo answers POST /edge-limit/buckets.
type bucketInfo struct {
	ID string `json:"id"`
	// Source is "etcd", or "snapshot" while the first list from etcd is
	// pending and the configs in force are the snapshot file's.
	Source string `json:"source"`
	Plan   string `json:"plan,omitempty"`
	Scope  string `json:"scope"`
	// EtcdRevision is the revision the instance's configs are current to.
	// The syncer keeps no revision per bucket.
	EtcdRevision int64 `json:"etcd_revision"`
	bucketState
	Global *globalBucketInfo `json:"global,omitempty"`
}

// globalBucketInfo is a global bucket's split across the fleet.
type globalBucketInfo struct {
	State  string     `json:"state"` // this instance's: joined, joining, fallback
	Fleet  configInfo `json:"fleet_limit"`
	Share  configInfo `json:"share"` // what this instance enforces
	Demand float64    `json:"demand"`
	// Members are the fleet's members as this instance sees them, with
	// their reported demands and the split's shares.
	Members []memberInfo `json:"members"`
}

type memberInfo struct {
	ID     string     `json:"id"`
	Self   bool       `json:"self,omitempty"`
	Demand float64    `json:"demand"`
	Share  configInfo `json:"share"`
}

// keyInfo answers /edge-limit/keys/<zone>. It never carries the key.
type keyInfo struct {
	Zone string `json:"zone"`
	// Bucket is "explicit" when an explicit bucket of that name takes
	// the key's requests, else "dynamic".
	Bucket string `json:"bucket"`
	// Held is false for a dynamic key without a bucket in memory: its
	// next request gets a full one.
	Held bool `json:"held"`
	bucketState
}

// statusInfo answers GET /edge-limit/status.
type statusInfo struct {
	InstanceID      string        `json:"instance_id"`
	ExplicitBuckets int64         `json:"explicit_buckets"`
	Etcd            *etcdStatus   `json:"etcd,omitempty"`
	Global          *globalStatus `json:"global,omitempty"`
	Zones           []zoneStatus  `json:"zones"`
	WASM            []wasmStatus  `json:"wasm"`
}

type etcdStatus struct {
	Connected bool  `json:"connected"`
	Revision  int64 `json:"revision"`
	// LastSyncAgeSeconds is how long ago the configs were last known
	// current; absent if never.
	LastSyncAgeSeconds *float64 `json:"last_sync_age_seconds,omitempty"`
	FirstSyncPending   bool     `json:"first_sync_pending"`
	LastError          string   `json:"last_error,omitempty"`
	Buckets            int      `json:"buckets"`
	Plans              int      `json:"plans"`
	Rejected           uint64   `json:"rejected"`
	Relists            uint64   `json:"relists"`
}

type globalStatus struct {
	State          string   `json:"state"`
	Members        []string `json:"members"`
	SafeMembers    int      `json:"safe_members"`
	Buckets        int      `json:"buckets"`
	LeaseID        int64    `json:"lease_id"`
	LastRenewalAge *float64 `json:"last_renewal_age_seconds,omitempty"`
	LastReportAge  *float64 `json:"last_report_age_seconds,omitempty"`
	ReportBytes    int      `json:"report_bytes"`
	OmittedBuckets int      `json:"omitted_buckets"`
	UnleasedKeys   int      `json:"unleased_member_keys"`
	IgnoredReports int      `json:"ignored_member_reports"`
}

type zoneStatus struct {
	Name       string     `json:"name"`
	Policy     string     `json:"policy"`
	Template   configInfo `json:"template"`
	MaxBuckets int        `json:"max_buckets"`
	Buckets    int64      `json:"buckets"`
	Evictions  uint64     `json:"evictions"`
	Displaced  uint64     `json:"displaced"`
}

type wasmStatus struct {
	Module     string            `json:"module"`
	Live       int               `json:"live"`
	Idle       int               `json:"idle"`
	Pending    int               `json:"pending"`
	Spare      int               `json:"spare"`
	GuestCalls uint64            `json:"guest_calls"`
	Replaced   uint64            `json:"replaced"`
	Rebuilt    uint64            `json:"rebuilt"`
	Errors     map[string]uint64 `json:"errors"`
}

// activeApp returns the edge_limit app of the running config.
func activeApp() (*App, error) {
	v, err := caddy.ActiveContext().AppIfConfigured("edge_limit")
	if err != nil {
		return nil, apiError(http.StatusNotFound, fmt.Errorf("no edge_limit app in the running config: %w", err))
	}
	return v.(*App), nil
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func onlyGet(r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET", r.Method))
	}
	return nil
}

// ageSeconds is the age of t, or nil if t is zero (never).
func ageSeconds(t time.Time) *float64 {
	if t.IsZero() {
		return nil
	}
	s := time.Since(t).Seconds()
	return &s
}

func serveStatus(w http.ResponseWriter, r *http.Request) error {
	if err := onlyGet(r); err != nil {
		return err
	}
	a, err := activeApp()
	if err != nil {
		return err
	}
	s := a.state
	out := statusInfo{InstanceID: s.instanceID, ExplicitBuckets: s.explicit.Stats().ExplicitBuckets, Zones: []zoneStatus{}, WASM: []wasmStatus{}}
	if e := s.etcd; e != nil {
		h, st := e.syncer.Health(), e.syncer.Stats()
		out.Etcd = &etcdStatus{
			Connected: h.Connected, Revision: h.Revision, LastSyncAgeSeconds: ageSeconds(h.LastSync),
			FirstSyncPending: h.FirstSync.IsZero(), LastError: h.LastError,
			Buckets: st.Buckets, Plans: st.Plans, Rejected: st.Rejected, Relists: st.Relists,
		}
		if e.coord != nil {
			gs := e.coord.Status()
			out.Global = &globalStatus{
				State: gs.State, Members: gs.Members, SafeMembers: gs.SafeMembers, Buckets: len(gs.Buckets),
				LeaseID: gs.LeaseID, LastRenewalAge: ageSeconds(gs.LastRenewal), LastReportAge: ageSeconds(gs.LastReport),
				ReportBytes: gs.ReportBytes, OmittedBuckets: gs.OmittedBuckets,
				UnleasedKeys: gs.UnleasedKeys, IgnoredReports: gs.IgnoredReports,
			}
		}
	}
	for name, c := range a.zoneClaimsCopy() {
		zs := zoneStatus{Name: name, Policy: c.policy, Template: newConfigInfo(c.config), MaxBuckets: c.maxBuckets}
		if z := zoneTable(name, c); z != nil {
			st := z.stats()
			zs.Buckets, zs.Evictions, zs.Displaced = st.DynamicBuckets, st.Evictions, st.Displaced
		}
		out.Zones = append(out.Zones, zs)
	}
	slices.SortFunc(out.Zones, func(x, y zoneStatus) int { return strings.Compare(x.Name, y.Name) })
	for path, st := range wasmModuleStats() {
		out.WASM = append(out.WASM, wasmStatus{
			Module: path, Live: st.Live, Idle: st.Idle, Pending: st.Pending, Spare: st.Spare,
			GuestCalls: st.GuestCalls, Replaced: st.Replaced, Rebuilt: st.Rebuilt, Errors: st.ErrorKinds(),
		})
	}
	slices.SortFunc(out.WASM, func(x, y wasmStatus) int { return strings.Compare(x.Module, y.Module) })
	return writeJSON(w, out)
}

// pathParam returns the unescaped rest of the request path after prefix,
// so that an ID with '/' can be sent escaped (%2F).
func pathParam(r *http.Request, prefix, what string) (string, error) {
	raw := strings.TrimPrefix(r.URL.EscapedPath(), prefix)
	v, err := url.PathUnescape(raw)
	if err != nil || v == "" {
		return "", apiError(http.StatusBadRequest, fmt.Errorf("want %s<%s>", prefix, what))
	}
	return v, nil
}

// serveBucket shows one explicit bucket. The ID comes in a POST form body
// (id=...): Caddy logs admin request URIs, and bucket IDs are often API
// keys, so an ID in the path is refused.
func serveBucket(w http.ResponseWriter, r *http.Request) error {
	switch {
	case r.Method != http.MethodPost:
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST with the bucket ID in a form body (id=...), as caddy edge-limit inspect does", r.Method))
	case r.URL.Path != adminBucket:
		return apiError(http.StatusBadRequest, errors.New("a bucket ID in the path would reach Caddy's admin log: POST /edge-limit/buckets with the ID in a form body (id=...)"))
	}
	id := r.PostFormValue("id")
	if id == "" {
		return apiError(http.StatusBadRequest, errors.New("no bucket ID given: send id=... in a form body"))
	}
	a, err := activeApp()
	if err != nil {
		return err
	}
	s := a.state
	st, ok := s.explicit.Peek(id, time.Now())
	if !ok {
		// The answer does not repeat the ID: Caddy logs admin errors.
		return apiError(http.StatusNotFound, errors.New("no explicit bucket with that ID is in force here (a value that etcd holds but that was rejected is not in force: see edgelimit_etcd_rejected_configs_total and the log)"))
	}
	out := bucketInfo{ID: id, Source: "etcd", Scope: "local", bucketState: newBucketState(st)}
	out.Plan, _ = s.explicit.BucketPlan(id)
	if e := s.etcd; e != nil {
		h := e.syncer.Health()
		out.EtcdRevision = h.Revision
		if h.FirstSync.IsZero() {
			out.Source = "snapshot"
		}
		if e.coord != nil {
			gs := e.coord.Status()
			if b, ok := gs.Buckets[id]; ok {
				out.Scope = "global"
				g := &globalBucketInfo{State: gs.State, Fleet: newConfigInfo(b.Global), Share: newConfigInfo(b.Share), Demand: b.Demand, Members: []memberInfo{}}
				fleet, _ := e.coord.Fleet(id)
				for _, m := range fleet {
					g.Members = append(g.Members, memberInfo{ID: m.Member, Self: m.Member == gs.InstanceID, Demand: m.Demand, Share: newConfigInfo(m.Share)})
				}
				out.Global = g
			}
		}
	}
	return writeJSON(w, out)
}

// serveKey looks one key up in a zone, as the zone's handlers would: an
// explicit bucket of that name first, then the zone's dynamic bucket. The
// key comes in a POST form body (key=...), which Caddy does not log; Caddy
// logs every admin request's URI at info, so ?key= in a GET is refused
// unless a handler of the zone has log_key.
func serveKey(w http.ResponseWriter, r *http.Request) error {
	zone, err := pathParam(r, adminKeys, "zone")
	if err != nil {
		return err
	}
	a, err := activeApp()
	if err != nil {
		return err
	}
	c, ok := a.zoneClaimsCopy()[zone]
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("no zone %q with dynamic buckets in the running config", zone))
	}
	var key string
	switch r.Method {
	case http.MethodPost:
		key = r.PostFormValue("key")
	case http.MethodGet:
		if r.URL.Query().Has("key") && !c.logKey {
			return apiError(http.StatusBadRequest, fmt.Errorf("zone %q does not log keys (log_key), and Caddy logs admin request URIs: send the key in a POST form body (key=...), as caddy edge-limit inspect does", zone))
		}
		key = r.URL.Query().Get("key")
	default:
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST (or GET where the zone logs keys)", r.Method))
	}
	if key == "" {
		return apiError(http.StatusBadRequest, errors.New("no key given"))
	}
	// The bucket key, as the handler makes it from a policy's key.
	key = policy.Verdict{Key: key}.BucketKey()
	now := time.Now()
	out := keyInfo{Zone: zone}
	if st, ok := a.state.explicit.Peek(key, now); ok {
		out.Bucket, out.Held, out.bucketState = limiter.KindExplicit, true, newBucketState(st)
		return writeJSON(w, out)
	}
	z := zoneTable(zone, c)
	if z == nil {
		return apiError(http.StatusNotFound, fmt.Errorf("zone %q has no bucket table yet", zone))
	}
	st, _ := z.lim.Peek(key, now) // the table has a template: always found
	out.Bucket, out.Held, out.bucketState = st.Kind, st.Held, newBucketState(st)
	return writeJSON(w, out)
}

// zoneClaimsCopy returns the zones of this config that have a template
// (and so a table of dynamic buckets).
func (a *App) zoneClaimsCopy() map[string]zoneClaim {
	a.zones.mu.Lock()
	defer a.zones.mu.Unlock()
	m := make(map[string]zoneClaim, len(a.zones.m))
	for k, v := range a.zones.m {
		m[k] = v
	}
	return m
}

// zoneTable returns the zone table that a config's handlers of zone use.
func zoneTable(name string, c zoneClaim) *zoneState {
	want := zoneKey{name: name, config: c.config, maxBuckets: c.maxBuckets}
	var z *zoneState
	zonePool.Range(func(k, v any) bool {
		if k == want {
			z = v.(*zoneState)
			return false
		}
		return true
	})
	return z
}

// Interface guards.
var _ caddy.AdminRouter = AdminAPI{}
