package caddymodule

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/edgelimit/edgelimit/limiter"
	"github.com/edgelimit/edgelimit/policy"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Unknown-key behaviours: what a request gets when its key has no
// explicit bucket, in the words of empty_key and on_error (policy.Fallback).
const (
	// UnknownRate counts it in a bucket of its own in the zone's table, at
	// the handler's rate and burst.
	UnknownRate = "rate"
	// UnknownSkip lets it through unlimited: only explicit buckets limit.
	UnknownSkip = "skip"
	// UnknownDeny rejects it: only keys with an explicit bucket get in.
	UnknownDeny = "deny"
)

// parseUnknown returns the unknown behaviour s names: one of the Unknown
// constants, the older "default" (rate) or "allow" (skip), or empty for
// the default, rate.
func parseUnknown(s string) (string, error) {
	switch s {
	case "", UnknownRate, "default":
		return UnknownRate, nil
	case UnknownSkip, "allow":
		return UnknownSkip, nil
	case UnknownDeny:
		return UnknownDeny, nil
	}
	return "", fmt.Errorf("%w: unknown %q; want rate, skip or deny", ErrInvalidConfig, s)
}

// DefaultZone is the zone of a handler that names none.
const DefaultZone = "default"

// zoneName restricts zone names so that they can go into a structured
// field string and a metric label without escaping.
var zoneName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// Handler rate-limits requests. It asks its policy for the request's key
// and cost, counts the request against the explicit bucket of that key if
// etcd defines one, otherwise against the zone's dynamic bucket made from
// the template, and denies with 429 when the bucket is empty: through the
// server's handle_errors routes, with the {err.*} placeholders of a Caddy
// handler error, or with the bare status where there are none (deny.go).
//
// Caddy's request matchers select which requests are limited.
type Handler struct {
	// Zone names the handler's bucket table, and appears in the
	// RateLimit fields and metrics. Handlers with the same zone share one
	// table, so they must have the same template and the same key policy.
	// "default" if empty.
	Zone string `json:"zone,omitempty"`

	// PolicyRaw makes the key of each request: a module in
	// http.handlers.edge_limit.policies (placeholder, header, client_ip,
	// or a plugin such as wasm). Client IP if empty.
	PolicyRaw json.RawMessage `json:"policy,omitempty" caddy:"namespace=http.handlers.edge_limit.policies inline_key=source"`

	// BucketTemplate is the limit of keys without an explicit bucket.
	BucketTemplate

	// MaxBuckets caps the zone's dynamic buckets, so that clients
	// inventing keys cannot grow memory without bound. At the cap, full
	// buckets go first, then a new key displaces the bucket closest to
	// full among a few near it: a new key is never let through unlimited.
	// 0 means the default: a sixty-fourth of the memory (GOMEMLIMIT, else
	// the machine's) at 32 bytes per bucket. Handlers of one zone must agree.
	MaxBuckets int `json:"max_buckets,omitempty"`

	// Unknown is what keys without an explicit bucket get: "rate" (a
	// bucket of their own at the handler's rate; the default), "skip" or
	// "deny". The older "default" and "allow" mean rate and skip.
	Unknown string `json:"unknown,omitempty"`

	// EmptyKey is what the built-in policies do with a request they cannot
	// key (missing header, all placeholders empty): "client_ip" (the
	// default: count it per client address, in a bucket separate from any
	// key), "shared" (one bucket for all such requests), "skip" or "deny"
	// (see policy.Fallback; "allow" means skip).
	EmptyKey string `json:"empty_key,omitempty"`

	// Cost is the tokens a request takes; 1 if zero.
	Cost int64 `json:"cost,omitempty"`

	// Shadow makes the handler decide and count but never deny: requests
	// that would be denied pass, are counted as shadow_denied and logged.
	// Buckets with "shadow": true in etcd behave the same way. In shadow
	// mode no rate-limit fields are sent, so clients see no change.
	Shadow bool `json:"shadow,omitempty"`

	// Status is the status code of denied requests; 429 if zero.
	Status int `json:"status,omitempty"`

	// Headers selects the rate-limit response fields: "draft" (the
	// default), "legacy", "both" or "off".
	Headers HeaderMode `json:"headers,omitempty"`

	// LogKey adds the bucket key to log entries. Off by default: keys are
	// often API keys or personal data.
	LogKey bool `json:"log_key,omitempty"`

	policy policy.Policy
	// placeholder is policy when it is a *policy.Placeholder, called
	// directly so that its key can be built on ServeHTTP's stack.
	placeholder *policy.Placeholder
	polClose    io.Closer
	app         *App
	explicit    *limiter.Limiter
	zone        *zoneState
	zoneKey     *zoneKey
	unknown     string
	status      int
	hdr         headerWriter
	// counters are set when the app starts (App.countOnStart).
	counters zoneCounters
	// rateText is the rate as the Caddyfile wrote it, for the adapter's
	// zone check; parsed is the policy as the Caddyfile gave it, nil for the
	// default (client IP). Neither survives into JSON.
	rateText string
	parsed   PolicyModule
	logger   *zap.Logger
	// policyErrLog logs policy failures at most once per second: a broken
	// WASM module fails every request, and the metric counts them all.
	policyErrLog *zap.Logger
	// routeErrLog logs failed error routes the same way: a broken
	// handle_errors fails every denied request.
	routeErrLog *zap.Logger
	// denyMode is how denials are answered (deny.go); srv and errorRoutes
	// are the server and its error routes as a denial sees them, compiled
	// (nil if none can answer one), for denyRoutes.
	denyMode    denyMode
	srv         *caddyhttp.Server
	errorRoutes func() *errorRoutes
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_limit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, builds the policy and attaches the handler to
// the app's explicit buckets and to its zone's table.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.setLogger(ctx.Logger())
	if h.Zone == "" {
		h.Zone = DefaultZone
	}
	if err := h.Validate(); err != nil {
		return err
	}
	h.unknown, _ = parseUnknown(h.Unknown) // checked above
	h.status = h.Status
	if h.status == 0 {
		h.status = http.StatusTooManyRequests
	}
	if h.Cost == 0 {
		h.Cost = 1
	}

	appIface, err := ctx.App("edge_limit")
	if err != nil {
		return fmt.Errorf("edge_limit handler: loading the edge_limit app: %w", err)
	}
	app := appIface.(*App)
	h.app = app
	h.explicit = app.Explicit()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("edge_limit handler: registering metrics: %w", err)
	}
	app.countOnStart(h)

	fallback, _ := policy.ParseFallback(h.EmptyKey) // checked above
	env := PolicyEnv{Cost: h.Cost, Fallback: fallback, Lookup: caddyLookup, ClientAddr: caddyClientAddr, Logger: h.logger}
	var pm PolicyModule = &ClientIPPolicy{}
	if h.PolicyRaw != nil {
		mod, err := ctx.LoadModule(h, "PolicyRaw")
		if err != nil {
			return fmt.Errorf("edge_limit handler: loading policy: %w", err)
		}
		var ok bool
		if pm, ok = mod.(PolicyModule); !ok {
			return fmt.Errorf("%w: module %T is not an edge_limit policy", ErrInvalidConfig, mod)
		}
	}
	pol, err := pm.NewPolicy(env)
	if err != nil {
		return policyError(string(pm.CaddyModule().ID.Name()), err)
	}
	h.setPolicy(pol)
	if c, ok := h.policy.(io.Closer); ok {
		h.polClose = c
	}

	claim, hasTmpl, err := h.zoneClaim(pm, "")
	if err != nil {
		return err
	}
	tmpl := claim.config
	if hasTmpl {
		if err := app.claimZone(h.Zone, claim); err != nil {
			return err
		}
		if h.Cost > tmpl.Burst {
			h.logger.Warn("cost exceeds the template's burst: keys without an explicit bucket are always denied",
				zap.String("zone", h.Zone), zap.Int64("cost", h.Cost), zap.Int64("burst", tmpl.Burst))
		}
		key := zoneKey{name: h.Zone, config: tmpl, maxBuckets: claim.maxBuckets}
		if h.zone, err = loadZone(key, h.logger); err != nil {
			return err
		}
		h.zoneKey = &key
	}
	h.hdr = newHeaderWriter(h.Headers, h.Zone, tmpl, hasTmpl)
	h.denyMode, h.srv = denyModeOf(ctx)
	if h.denyMode == denyRoutes {
		h.errorRoutes = compileErrorRoutes(ctx, h.srv, h.status, h)
	}
	return nil
}

// setPolicy sets the handler's key policy.
func (h *Handler) setPolicy(p policy.Policy) {
	h.policy = p
	h.placeholder, _ = p.(*policy.Placeholder)
}

// zoneClaim is what the handler claims of its zone (see zoneClaims.claim),
// with pm its key policy and where its position if known; ok is false for a
// handler without a template, which has no zone table. The Caddyfile
// adapter calls it too, so that it finds the conflicts Provision would.
func (h *Handler) zoneClaim(pm PolicyModule, where string) (c zoneClaim, ok bool, err error) {
	if h.Rate <= 0 {
		return zoneClaim{}, false, nil
	}
	tmpl, err := h.BucketTemplate.config(false)
	if err != nil {
		return zoneClaim{}, false, fmt.Errorf("edge_limit zone %q: %w", h.Zone, err)
	}
	maxBuckets := h.MaxBuckets
	if maxBuckets == 0 {
		maxBuckets = defaultMaxBuckets()
	}
	return zoneClaim{
		config: tmpl, policy: keySpace(pm), maxBuckets: maxBuckets,
		written: h.BucketTemplate.text(h.rateText), maxBucketsSet: h.MaxBuckets != 0, where: where,
		logKey: h.LogKey,
	}, true, nil
}

// Validate implements caddy.Validator. It is the one check of the plain
// fields: Provision runs it before using them, and the Caddyfile adapter
// runs it to report a bad value with its file and line (unmarshalHandler).
func (h *Handler) Validate() error {
	zone := cmp.Or(h.Zone, DefaultZone)
	if !zoneName.MatchString(zone) {
		return fmt.Errorf("%w: zone %q: want 1-64 letters, digits, '_', '.', ':' or '-'", ErrInvalidConfig, zone)
	}
	unknown, err := parseUnknown(h.Unknown)
	if err != nil {
		return err
	}
	// Without a rate there is no template, which only keys that are
	// skipped or denied outright can do without.
	if h.Rate <= 0 && unknown == UnknownRate {
		return fmt.Errorf("%w: zone %q: a rate is required (e.g. rate 100/1s) unless unknown is skip or deny", ErrInvalidConfig, zone)
	}
	if h.Rate < 0 || h.Burst < 0 || h.Per < 0 {
		return fmt.Errorf("%w: zone %q: rate, per and burst must not be negative", ErrInvalidConfig, zone)
	}
	if _, err := policy.ParseFallback(h.EmptyKey); err != nil {
		return fmt.Errorf("%w: empty_key: %w", ErrInvalidConfig, err)
	}
	if h.Cost < 0 || h.Cost > limiter.MaxBurst {
		return fmt.Errorf("%w: cost %d; want 1..%d", ErrInvalidConfig, h.Cost, limiter.MaxBurst)
	}
	if h.MaxBuckets < 0 {
		return fmt.Errorf("%w: zone %q: max_buckets %d must not be negative", ErrInvalidConfig, zone, h.MaxBuckets)
	}
	if h.Status != 0 && (h.Status < 400 || h.Status > 599) {
		return fmt.Errorf("%w: status %d; want an error status, 400..599", ErrInvalidConfig, h.Status)
	}
	return h.Headers.validate()
}

// setLogger sets the handler's logger and the sampled loggers for failures
// that repeat per request, which record the first failure each second (per
// message) and drop the rest.
func (h *Handler) setLogger(l *zap.Logger) {
	h.logger = l
	h.policyErrLog = l.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 1, 0)
	}))
	h.routeErrLog = h.policyErrLog
}

// Cleanup releases the zone table and the policy. It works after a
// Provision that failed halfway.
func (h *Handler) Cleanup() error {
	var errs []error
	if h.zoneKey != nil {
		if _, err := zonePool.Delete(*h.zoneKey); err != nil {
			errs = append(errs, err)
		}
		h.zoneKey = nil
	}
	if h.polClose != nil {
		errs = append(errs, h.polClose.Close())
		h.polClose = nil
	}
	return errors.Join(errs...)
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// Wait for the app to start if the HTTP server started first. A start
	// that failed fails Caddy's start too; until then, requests get the
	// zone templates.
	_ = h.app.start()
	// The key may alias keyBuf: it is only used in this call, and
	// logDenied copies it. A call through the Policy interface would move
	// keyBuf to the heap.
	var keyBuf [policy.KeyBufSize]byte
	var v policy.Verdict
	var err error
	if h.placeholder != nil {
		v, err = h.placeholder.EvaluateInto(keyBuf[:0], r)
	} else {
		v, err = h.policy.Evaluate(r)
	}
	if err != nil {
		// The verdict is already the policy's fallback; the error is news.
		h.counters.policyErrors.Inc()
		h.policyErrLog.Warn("policy failed; applying its fallback (logged at most once a second)", zap.String("zone", h.Zone), zap.String("action", v.Action.String()), zap.Error(err))
	}
	switch v.Action {
	case policy.Skip:
		h.counters.byResult[resultSkipped].Inc()
		return next.ServeHTTP(w, r)
	case policy.Deny:
		h.counters.byResult[resultPolicyDenied].Inc()
		return h.deny(w, r, ErrPolicyDenied)
	}

	// The bucket key, not the policy's raw key: a key a client chose must
	// not land in a namespace reserved to the fallbacks.
	key := v.BucketKey()
	now := time.Now()
	// Explicit buckets (from etcd) first; a miss, the common case, is the
	// bare sentinel and costs no allocation.
	d, err := h.explicit.AllowN(key, now, int(v.Cost))
	if err == limiter.ErrBucketNotFound {
		switch {
		case h.unknown == UnknownSkip:
			h.counters.byResult[resultUnknownAllowed].Inc()
			return next.ServeHTTP(w, r)
		case h.unknown == UnknownDeny:
			h.counters.byResult[resultUnknownDenied].Inc()
			h.logDenied(zap.DebugLevel, "unknown key denied", key)
			return h.deny(w, r, ErrUnknownKey)
		}
		d, err = h.zone.lim.AllowN(key, now, int(v.Cost))
	}
	if err != nil {
		if errors.Is(err, limiter.ErrInvalidCost) {
			// A cost above the bucket's burst can never be paid: deny,
			// without Retry-After, since waiting will not help. Passing it
			// would let a policy's (or a tenant's) large cost bypass the limit.
			h.counters.byResult[resultDenied].Inc()
			h.logDenied(zap.DebugLevel, "cost exceeds the bucket's burst", key)
			return h.deny(w, r, fmt.Errorf("%w: %w", ErrRateLimited, err))
		}
		// An engine error: fail open, since a limiter bug must not take the
		// site down.
		h.counters.byResult[resultError].Inc()
		h.logger.Error("rate-limit decision failed; request passed", zap.String("zone", h.Zone), zap.Error(err))
		return next.ServeHTTP(w, r)
	}

	if !d.Allowed && (h.Shadow || d.Config.Shadow) {
		h.counters.byResult[resultShadowDenied].Inc()
		h.logDenied(zap.InfoLevel, "shadow: request would be denied", key)
		return next.ServeHTTP(w, r)
	}
	if !h.Shadow && !d.Config.Shadow {
		h.hdr.write(w.Header(), d.Config, d.Remaining, d.ResetAfter)
	}
	if !d.Allowed {
		h.counters.byResult[resultDenied].Inc()
		w.Header()[hdrRetryAfter] = []string{strconv.FormatInt(max(1, ceilSeconds(d.RetryAfter)), 10)}
		h.logDenied(zap.DebugLevel, "rate limit exceeded", key)
		return h.deny(w, r, ErrRateLimited)
	}
	h.counters.byResult[resultAllowed].Inc()
	return next.ServeHTTP(w, r)
}

// logDenied logs a denial, with the key only when the operator asked for
// it. Real denials go at debug level (a flood of denials must not flood the
// log; the metrics count them); shadow denials at info, since seeing them
// is the point of a dry run.
func (h *Handler) logDenied(level zapcore.Level, msg, key string) {
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	if h.LogKey {
		// A copy: key may be on the caller's stack.
		ce.Write(zap.String("zone", h.Zone), zap.String("key", strings.Clone(key)))
		return
	}
	ce.Write(zap.String("zone", h.Zone))
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
