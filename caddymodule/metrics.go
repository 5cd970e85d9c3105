package caddymodule

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgelimit/edgelimit/wasm"
)

// Decision results: indexes of zoneCounters.byResult, so that counting one
// is an array index rather than a map lookup on every request.
const (
	resultAllowed = iota
	resultDenied
	resultShadowDenied // would have been denied; passed in shadow mode
	resultSkipped      // the policy said Skip
	resultPolicyDenied // the policy said Deny
	resultUnknownAllowed
	resultUnknownDenied
	resultError // the engine failed (not a cost over the burst, which is denied); the request passed
	numResults
)

// resultLabels are the values of the "result" label, by result.
var resultLabels = [numResults]string{
	resultAllowed:        "allowed",
	resultDenied:         "denied",
	resultShadowDenied:   "shadow_denied",
	resultSkipped:        "skipped",
	resultPolicyDenied:   "policy_denied",
	resultUnknownAllowed: "unknown_allowed",
	resultUnknownDenied:  "unknown_denied",
	resultError:          "error",
}

// metrics are process-wide and created once: Caddy gives every config load
// a fresh registry, but counters must keep counting across reloads, so the
// same collectors are registered into each new registry. Labels are zones
// and results, never client keys, which would make the series unbounded.
var metrics = struct {
	once         sync.Once
	decisions    *prometheus.CounterVec
	policyErrors *prometheus.CounterVec
	state        stateCollector
}{}

func initMetrics() {
	metrics.once.Do(func() {
		metrics.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgelimit",
			Name:      "decisions_total",
			Help:      "Rate-limit decisions by zone and result.",
		}, []string{"zone", "result"})
		metrics.policyErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgelimit",
			Name:      "policy_errors_total",
			Help:      "Requests whose policy failed and got the policy's fallback, by zone.",
		}, []string{"zone"})
	})
}

// registerMetrics adds the collectors to a config's registry. Several
// modules of one config call it; only the first registration counts.
func registerMetrics(reg *prometheus.Registry) error {
	initMetrics()
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metrics.decisions, metrics.policyErrors, &metrics.state} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// zoneCounters are one zone's decision counters, resolved once at
// provisioning so that a request only does an atomic add.
type zoneCounters struct {
	byResult     [numResults]prometheus.Counter
	policyErrors prometheus.Counter
}

func newZoneCounters(zone string) zoneCounters {
	initMetrics()
	var zc zoneCounters
	for r, label := range resultLabels {
		zc.byResult[r] = metrics.decisions.WithLabelValues(zone, label)
	}
	zc.policyErrors = metrics.policyErrors.WithLabelValues(zone)
	return zc
}

var (
	descExplicit = prometheus.NewDesc("edgelimit_explicit_buckets",
		"Explicit buckets (from etcd) held in memory.", nil, nil)
	descDynamic = prometheus.NewDesc("edgelimit_dynamic_buckets",
		"Dynamic buckets (made from a zone's template) held in memory, by zone.", []string{"zone"}, nil)
	descEvictions = prometheus.NewDesc("edgelimit_evictions_total",
		"Dynamic buckets evicted after refilling to full, by zone.", []string{"zone"}, nil)
	descDisplaced = prometheus.NewDesc("edgelimit_displaced_total",
		"Dynamic buckets dropped at the zone's max_buckets cap to make room for a new key (the one closest to full of a few), by zone.", []string{"zone"}, nil)
	descMaxBuckets = prometheus.NewDesc("edgelimit_max_buckets",
		"The zone's cap on dynamic buckets (max_buckets), by zone.", []string{"zone"}, nil)
	descConnected = prometheus.NewDesc("edgelimit_etcd_connected",
		"1 when the bucket watch on etcd is live, 0 while it retries (serving the last known configs).", nil, nil)
	descRevision = prometheus.NewDesc("edgelimit_etcd_revision",
		"etcd revision of the last applied bucket config change.", nil, nil)
	descSyncAge = prometheus.NewDesc("edgelimit_etcd_last_sync_age_seconds",
		"Seconds since the syncer last knew its configs current (event, list, progress answer or revision check); up to about 3 progress intervals (15 s) on a healthy idle etcd.", nil, nil)
	descRejected = prometheus.NewDesc("edgelimit_etcd_rejected_configs_total",
		"Bucket configs in etcd that failed validation and were not applied.", nil, nil)
	descFirstSync = prometheus.NewDesc("edgelimit_etcd_first_sync_pending",
		"1 until the first list of the buckets in etcd is applied (serving the snapshot, if any, meanwhile), then 0.", nil, nil)
	descUnleased = prometheus.NewDesc("edgelimit_global_unleased_member_keys",
		"Keys under the members prefix without a lease: not counted as members (a copied key or a script writing there).", nil, nil)
	descIgnoredReports = prometheus.NewDesc("edgelimit_global_ignored_member_reports",
		"Members whose demand report is ignored (over the size bound, or not a report): they count with no demand.", nil, nil)
	descIgnoredWrites = prometheus.NewDesc("edgelimit_global_ignored_member_writes_total",
		"Values under the members prefix ignored so far (no lease, over the size bound, or not a report).", nil, nil)
	descGlobalState = prometheus.NewDesc("edgelimit_global_state",
		"1 for the global-limit state this instance is in, 0 for the others: joined (shares from the fleet's split), joining (never joined: rate/expected_members) or fallback (lease lost: rate/last known member count).", []string{"state"}, nil)
	descGlobalMembers = prometheus.NewDesc("edgelimit_global_members",
		"Members of the global-limit fleet in this instance's view.", nil, nil)
	descEventWrites = prometheus.NewDesc("edgelimit_global_event_writes_total",
		"Demand reports written between sync intervals because demand moved or burst tokens were released (bounded per interval); the interval's own writes are not counted.", nil, nil)
	descReleased = prometheus.NewDesc("edgelimit_global_released_tokens_total",
		"Burst tokens this instance gave up to the other members when its shares shrank.", nil, nil)
	descCredited = prometheus.NewDesc("edgelimit_global_credited_tokens_total",
		"Burst tokens this instance added to its buckets from other members' releases when its shares grew; over the fleet, never more than were released.", nil, nil)
	descGuestCalls = prometheus.NewDesc("edgelimit_wasm_guest_calls_total",
		"Requests a WASM policy module was called for: those its verdict cache did not answer, by module file.", []string{"module"}, nil)
	descWASMErrors = prometheus.NewDesc("edgelimit_wasm_errors_total",
		"Failed WASM policy calls by module file and kind (trap, timeout, bad_result, key_too_long, guest_error, request_too_large, pool_busy, replacing).", []string{"module", "kind"}, nil)
	descInstances = prometheus.NewDesc("edgelimit_wasm_instances",
		"Live instances of a WASM policy module, by module file.", []string{"module"}, nil)
	descReplaced = prometheus.NewDesc("edgelimit_wasm_instances_replaced_total",
		"WASM policy instances thrown away after a trap, timeout or malformed result, by module file.", []string{"module"}, nil)
	descPending = prometheus.NewDesc("edgelimit_wasm_replacements_pending",
		"WASM policy instances thrown away and not yet replaced, by module file: while any are, a call that finds no idle instance gets on_error at once (kind replacing).", []string{"module"}, nil)
	descRebuilt = prometheus.NewDesc("edgelimit_wasm_instances_rebuilt_total",
		"WASM policy instances made off the request path, as replacements or the spare, by module file.", []string{"module"}, nil)
)

// stateCollector reports the state that outlives reloads (the pools of
// zones and app states) at scrape time, so the figures are never stale and
// nothing runs on the request path to keep them.
type stateCollector struct{}

func (*stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descExplicit, descDynamic, descEvictions, descDisplaced, descMaxBuckets, descConnected, descRevision, descSyncAge, descRejected,
		descFirstSync, descUnleased, descIgnoredReports, descIgnoredWrites, descGlobalState, descGlobalMembers, descEventWrites, descReleased, descCredited, descGuestCalls, descWASMErrors, descInstances, descReplaced, descPending, descRebuilt} {
		ch <- d
	}
}

func (*stateCollector) Collect(ch chan<- prometheus.Metric) {
	// While a reload swaps configs, two tables may exist for one zone; their
	// figures are summed so that every series stays unique.
	type zsum struct{ dynamic, evictions, displaced, max float64 }
	zones := map[string]*zsum{}
	zonePool.Range(func(_, v any) bool {
		z := v.(*zoneState)
		st := z.stats()
		s := zones[z.name]
		if s == nil {
			s = &zsum{}
			zones[z.name] = s
		}
		s.dynamic += float64(st.DynamicBuckets)
		s.evictions += float64(st.Evictions)
		s.displaced += float64(st.Displaced)
		s.max = max(s.max, float64(z.maxBuckets))
		return true
	})
	for name, s := range zones {
		ch <- prometheus.MustNewConstMetric(descDynamic, prometheus.GaugeValue, s.dynamic, name)
		ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, s.evictions, name)
		ch <- prometheus.MustNewConstMetric(descDisplaced, prometheus.CounterValue, s.displaced, name)
		ch <- prometheus.MustNewConstMetric(descMaxBuckets, prometheus.GaugeValue, s.max, name)
	}
	collectWASM(ch)
	// One app state per process in practice; during a reload that changes
	// the etcd connection, the newest state is reported.
	var newest *appState
	statePool.Range(func(_, v any) bool {
		s := v.(*appState)
		if newest == nil || s.created.After(newest.created) {
			newest = s
		}
		return true
	})
	if newest == nil {
		return
	}
	m := newest.metricsSnapshot()
	ch <- prometheus.MustNewConstMetric(descExplicit, prometheus.GaugeValue, m.explicit)
	if m.hasEtcd {
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, m.connected)
		ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, m.revision)
		ch <- prometheus.MustNewConstMetric(descSyncAge, prometheus.GaugeValue, m.syncAge)
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, m.rejected)
		ch <- prometheus.MustNewConstMetric(descFirstSync, prometheus.GaugeValue, m.firstSyncPending)
	}
	if m.hasGlobal {
		ch <- prometheus.MustNewConstMetric(descUnleased, prometheus.GaugeValue, m.unleasedKeys)
		ch <- prometheus.MustNewConstMetric(descIgnoredReports, prometheus.GaugeValue, m.ignoredReports)
		ch <- prometheus.MustNewConstMetric(descIgnoredWrites, prometheus.CounterValue, m.ignoredWrites)
		for _, st := range globalStates {
			v := 0.0
			if st == m.globalState {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descGlobalState, prometheus.GaugeValue, v, st)
		}
		ch <- prometheus.MustNewConstMetric(descGlobalMembers, prometheus.GaugeValue, m.globalMembers)
		ch <- prometheus.MustNewConstMetric(descEventWrites, prometheus.CounterValue, m.eventWrites)
		ch <- prometheus.MustNewConstMetric(descReleased, prometheus.CounterValue, m.releasedTokens)
		ch <- prometheus.MustNewConstMetric(descCredited, prometheus.CounterValue, m.creditedTokens)
	}
}

// stateMetrics is what an app state reports at scrape time.
type stateMetrics struct {
	explicit  float64
	hasEtcd   bool
	connected float64
	revision  float64
	syncAge   float64
	rejected  float64
	// firstSyncPending is 1 until the syncer's first list completes.
	firstSyncPending float64
	// The global coordinator's view of the members prefix.
	hasGlobal                                   bool
	unleasedKeys, ignoredReports, ignoredWrites float64
	globalState                                 string // global.Status.State
	globalMembers                               float64
	eventWrites, releasedTokens, creditedTokens float64
}

// globalStates are the values of global.Status.State, each a series of
// edgelimit_global_state, so that an alert can test one for 1.
var globalStates = []string{"joined", "joining", "fallback"}

// collectWASM reports the loaded WASM policy modules. A module file loaded
// with different options is several modules (during a reload, the old and
// the new config's); their figures are summed per file.
func collectWASM(ch chan<- prometheus.Metric) {
	for path, st := range wasmModuleStats() {
		ch <- prometheus.MustNewConstMetric(descGuestCalls, prometheus.CounterValue, float64(st.GuestCalls), path)
		for kind, n := range st.ErrorKinds() {
			ch <- prometheus.MustNewConstMetric(descWASMErrors, prometheus.CounterValue, float64(n), path, kind)
		}
		ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(st.Live), path)
		ch <- prometheus.MustNewConstMetric(descReplaced, prometheus.CounterValue, float64(st.Replaced), path)
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.Pending), path)
		ch <- prometheus.MustNewConstMetric(descRebuilt, prometheus.CounterValue, float64(st.Rebuilt), path)
	}
}

// wasmModuleStats returns the loaded WASM policy modules' stats, summed
// per module file.
func wasmModuleStats() map[string]*wasm.Stats {
	mods := map[string]*wasm.Stats{}
	wasmPool.Range(func(k, v any) bool {
		key, ok1 := k.(wasmKey)
		w, ok2 := v.(pooledWASM)
		if !ok1 || !ok2 {
			return true
		}
		sum := mods[key.Path]
		if sum == nil {
			sum = &wasm.Stats{}
			mods[key.Path] = sum
		}
		sum.Add(w.p.Stats())
		return true
	})
	return mods
}
