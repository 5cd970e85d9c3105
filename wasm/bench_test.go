package wasm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/wasm/abi"
	"github.com/edgelimit/edgelimit/wasm/wasmtest"
)

var benchReq = abi.Request{
	Method:   "GET",
	Host:     "api.example.com",
	Path:     "/v1/items",
	Query:    "page=2",
	RemoteIP: "203.0.113.7",
	Headers:  []abi.Header{{Name: "X-Api-Key", Value: "acme_5f2b9c0e"}},
}

const benchConfig = "acme=gold globex=silver default=free"

// refPlans and refDecide are the apikey example's logic in plain Go: the
// reference a WASM call is measured against.
var refPlans = map[string]string{"acme": "gold", "globex": "silver", "default": "free"}

func refDecide(r *abi.Request) Result {
	var apiKey string
	for _, h := range r.Headers {
		if h.Name == "X-Api-Key" {
			apiKey = h.Value
		}
	}
	tenant, _, _ := strings.Cut(apiKey, "_")
	plan, ok := refPlans[tenant]
	if !ok {
		plan = refPlans["default"]
	}
	return Result{Action: abi.Limit, Cost: 1, Key: plan + ":" + tenant}
}

func loadBench(b *testing.B, dl deadline, cfg Config) *Module {
	b.Helper()
	cfg.Config = benchConfig
	cfg.Timeout = time.Second // the machines are loaded; the deadline's value does not change a call's cost
	cfg.NoCache = true        // the benchmarks repeat one request: they measure the guest call
	m, err := load(context.Background(), wasmtest.Example(b, "apikey"), cfg, dl)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close(context.Background()) })
	return m
}

// BenchmarkDecide compares one pooled call to the Go guest under each
// deadline mechanism with the same logic in plain Go. Every call is timed,
// and p50/p99 reported: on shared, loaded machines the median is the
// figure that survives noise.
func BenchmarkDecide(b *testing.B) {
	b.Run("reference=plain-go", func(b *testing.B) {
		timed(b, func() {
			if res := refDecide(&benchReq); res.Key != "gold:acme" {
				b.Fatal(res)
			}
		})
	})
	for _, dl := range []deadline{deadlineInterrupt, deadlineCancel, deadlinePerCall, deadlineNone} {
		b.Run("deadline="+dl.String(), func(b *testing.B) {
			m := loadBench(b, dl, Config{})
			timed(b, func() {
				res, err := m.Decide(&benchReq)
				if err != nil || res.Key != "gold:acme" {
					b.Fatal(res, err)
				}
			})
		})
	}
}

// timed runs f b.N times, timing each call, and reports p50 and p99.
func timed(b *testing.B, f func()) {
	lat := make([]time.Duration, 0, 1<<20)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		f()
		if d := time.Since(start); len(lat) < cap(lat) {
			lat = append(lat, d)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkDecideParallel measures the pool under contention at several
// sizes, against the plain-Go reference in parallel.
func BenchmarkDecideParallel(b *testing.B) {
	b.Run("reference=plain-go", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				refDecide(&benchReq)
			}
		})
	})
	procs := runtime.GOMAXPROCS(0)
	for _, size := range []int{1, procs, 2 * procs, 4 * procs} {
		b.Run(fmt.Sprintf("pool=%d", size), func(b *testing.B) {
			m := loadBench(b, deadlineInterrupt, Config{PoolSize: size})
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Decide(&benchReq); err != nil {
						b.Error(err)
						return
					}
				}
			})
			s := m.Stats()
			b.ReportMetric(float64(s.Live), "instances")
			b.ReportMetric(float64(s.PoolBusy), "pool-busy")
		})
	}
	// pinned: each goroutine keeps one instance for the whole run, so an
	// instance never moves between cores. Against pool=GOMAXPROCS it
	// shows what instances travelling between cores' caches cost.
	b.Run("pinned", func(b *testing.B) {
		m := loadBench(b, deadlineInterrupt, Config{PoolSize: procs})
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			in, err := m.acquire()
			if err != nil {
				b.Error(err)
				return
			}
			defer m.release(in, false)
			size := benchReq.Size()
			for pb.Next() {
				r, _, err := m.call(in, &benchReq, nil, size)
				if err != nil {
					b.Error(err)
					return
				}
				_ = toResult(r) // the key's copy, as in Decide
			}
		})
	})
}

// BenchmarkInstantiate measures making one Go guest instance (instantiate,
// _initialize, edgelimit_init), the cost the pool amortizes.
func BenchmarkInstantiate(b *testing.B) {
	m := loadBench(b, deadlineInterrupt, Config{})
	var mu sync.Mutex
	b.ReportAllocs()
	for b.Loop() {
		in, _, err := m.newInstance()
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		pages := in.mem.Size() / 65536
		mu.Unlock()
		m.closeInstance(in)
		b.ReportMetric(float64(pages), "pages")
	}
}

// BenchmarkLoad measures a config load of the Go guest: instrumenting,
// compiling, checking and making the first instance. "cold" is a first
// load (or a changed file); "reload" loads the same bytes while the old
// Module is still open, as a Caddy config reload does, and shares its
// compiled code.
func BenchmarkLoad(b *testing.B) {
	bin := wasmtest.Example(b, "apikey")
	load := func(b *testing.B) {
		m, err := Load(context.Background(), bin, Config{Config: benchConfig})
		if err != nil {
			b.Fatal(err)
		}
		m.Close(context.Background())
	}
	b.Run("cold", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			load(b)
		}
	})
	b.Run("reload", func(b *testing.B) {
		old, err := Load(context.Background(), bin, Config{Config: benchConfig})
		if err != nil {
			b.Fatal(err)
		}
		defer old.Close(context.Background())
		b.ReportAllocs()
		for b.Loop() {
			load(b)
		}
	})
}

// BenchmarkDecideFloor separates the costs: the host alone (a WAT guest
// that returns a constant), the Go SDK's fixed cost (decode a request,
// return a constant), and a Go policy reading three headers.
func BenchmarkDecideFloor(b *testing.B) {
	for _, c := range []struct {
		name string
		bin  func() []byte
		r    *abi.Request
	}{
		{"guest=go-constant", func() []byte { return wasmtest.Go(b, wasmtest.GoHostile) }, &abi.Request{Path: "/"}},
		{"guest=go-composite", func() []byte { return wasmtest.Example(b, "composite") }, &abi.Request{Method: "GET", Path: "/v1/items", RemoteIP: "192.0.2.1",
			Headers: []abi.Header{{Name: "X-Tenant", Value: "acme"}, {Name: "X-Region", Value: "eu-west"}, {Name: "X-Client-Id", Value: "42"}}}},
		{"guest=wat-constant", func() []byte { return wasmtest.WAT(b, "good") }, &abi.Request{Path: "/"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			m, err := Load(context.Background(), c.bin(), Config{Timeout: time.Second, NoCache: true})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close(context.Background())
			timed(b, func() {
				if _, err := m.Decide(c.r); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// guestVariants are Go guests that each add one piece of a policy's work,
// built from source to split a call's cost on the guest side (see
// BenchmarkGuestVariants). The raw-* guests do without the SDK: the ABI
// exports written out by hand, answering a constant, with and without
// decoding the request.
var guestVariants = []struct{ name, src string }{
	{"raw-constant", rawGuest("")},
	{"raw-decode", rawGuest(`if abi.DecodeRequest(in[:n], &req) != nil {
		return 0
	}`)},
	{"sdk-constant", sdkGuest(`return guest.Limit("ok")`)},
	{"sdk-3-headers", sdkGuest(`if r.Header("X-Tenant") == "" || r.Header("X-Region") == "" || r.Header("X-Client-Id") == "" {
		return guest.Deny()
	}
	return guest.Limit("ok")`)},
	{"sdk-key-6-parts", sdkGuest(`return guest.Limit(guest.Key("t=", r.Method, "|r=", r.Path, "|c=", r.RemoteIP))`)},
}

// jwtEncodingJSON is the jwtsub example written with strings.Split,
// base64's DecodeString and encoding/json: the reference for what
// allocating and reflection cost a guest (BenchmarkGuestVariants).
const jwtEncodingJSON = `package main

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/edgelimit/edgelimit/wasm/guest"
)

func main() {}

func init() {
	guest.Register(guest.Policy{Headers: []string{"Authorization"}, Fields: guest.RemoteIP, Decide: decide})
}

func decide(r *guest.Request) guest.Verdict {
	token, ok := strings.CutPrefix(r.Header("Authorization"), "Bearer ")
	if !ok {
		return guest.Limit(guest.Key("ip:", r.RemoteIP))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return guest.Fail("not three parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return guest.Fail("not base64url")
	}
	var claims struct {
		Sub string ` + "`json:\"sub\"`" + `
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Sub == "" {
		return guest.Fail("no sub claim")
	}
	return guest.Limit(guest.Key("sub:", claims.Sub))
}
`

// rawGuest is a guest with the ABI exports written by hand; work runs in
// edgelimit_decide before it answers a constant.
func rawGuest(work string) string {
	return `package main

import (
	"unsafe"

	"github.com/edgelimit/edgelimit/wasm/abi"
)

var req abi.Request // package-level, as the SDK keeps it: no per-call allocation
var in = make([]byte, 8192)
var out = []byte{0, 1, 0, 0, 0, 'o', 'k'}
var initOK = abi.AppendInit(nil, abi.AllFields, []string{"X-Tenant", "X-Region", "X-Client-Id"})

func main() {}

func p(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(&b[0]))) }

//go:wasmexport edgelimit_abi_version
func version() uint32 { return abi.Version }

//go:wasmexport edgelimit_alloc
func alloc(n uint32) uint32 {
	if n > uint32(len(in)) {
		in = make([]byte, n)
	}
	return p(in)
}

//go:wasmexport edgelimit_init
func initx(ptr, n uint32) uint64 { return uint64(p(initOK))<<32 | uint64(len(initOK)) }

//go:wasmexport edgelimit_decide
func decide(ptr, n uint32) uint64 {
	` + work + `
	return uint64(p(out))<<32 | uint64(len(out))
}
`
}

// sdkGuest is a guest written with the SDK whose Decide body is decide.
func sdkGuest(decide string) string {
	return `package main

import "github.com/edgelimit/edgelimit/wasm/guest"

func main() {}

func init() {
	guest.Register(guest.Policy{
		Headers: []string{"X-Tenant", "X-Region", "X-Client-Id"},
		Decide: func(r *guest.Request) guest.Verdict {
			` + decide + `
		},
	})
}
`
}

// exampleRequests are requests each example policy answers with a Limit
// through its main path: apikey a known tenant's key, composite its three
// headers, jwtsub a bearer token, pathweight a weighted path.
var exampleRequests = map[string]*abi.Request{
	"apikey":    &benchReq,
	"composite": &compositeReq,
	"jwtsub": {Method: "GET", Path: "/v1/items", RemoteIP: "192.0.2.1", Headers: []abi.Header{{Name: "Authorization",
		Value: "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2ln"}}}, // {"sub":"user-42"}
	"pathweight": {Method: "GET", Path: "/search/items", RemoteIP: "192.0.2.1"},
}

// compositeReq carries the three headers of the composite example.
var compositeReq = abi.Request{Method: "GET", Path: "/v1/items", RemoteIP: "192.0.2.1",
	Headers: []abi.Header{{Name: "X-Tenant", Value: "acme"}, {Name: "X-Region", Value: "eu-west"}, {Name: "X-Client-Id", Value: "42"}}}

// BenchmarkGuestVariants times the guests of guestVariants on the same
// three-header request as the composite example, against the host-only
// WAT guest, then each example policy on its own request, and jwtsub
// against jwtEncodingJSON.
func BenchmarkGuestVariants(b *testing.B) {
	type variant struct {
		name string
		bin  func(b *testing.B) []byte
		req  *abi.Request
	}
	vs := []variant{{"wat-constant", func(b *testing.B) []byte { return wasmtest.WAT(b, "good") }, &compositeReq}}
	for _, v := range guestVariants {
		vs = append(vs, variant{"go-" + v.name, func(b *testing.B) []byte { return buildGoSource(b, v.src) }, &compositeReq})
	}
	for _, name := range []string{"apikey", "composite", "jwtsub", "pathweight"} {
		vs = append(vs, variant{"go-" + name, func(b *testing.B) []byte { return wasmtest.Example(b, name) }, exampleRequests[name]})
	}
	vs = append(vs, variant{"go-jwtsub-encoding-json", func(b *testing.B) []byte { return buildGoSource(b, jwtEncodingJSON) }, exampleRequests["jwtsub"]})
	for _, v := range vs {
		b.Run("guest="+v.name, func(b *testing.B) {
			cfg := Config{Timeout: time.Second, NoCache: true}
			if v.name == "go-apikey" {
				cfg.Config = benchConfig
			}
			m, err := Load(context.Background(), v.bin(b), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close(context.Background())
			timed(b, func() {
				if res, err := m.Decide(v.req); err != nil || res.Action != abi.Limit {
					b.Fatal(res, err)
				}
			})
		})
	}
}

// buildGoSource builds one main package file as a Go guest, resolving its
// imports in this module.
func buildGoSource(b *testing.B, src string) []byte {
	b.Helper()
	file := filepath.Join(b.TempDir(), "main.go")
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		b.Fatal(err)
	}
	return wasmtest.Go(b, file)
}

// BenchmarkDecideCold times one uncached call with the CPU caches warm (the
// call repeated back to back, as the other benchmarks do) and cold (16 MiB
// written between calls, outside the timing, which evicts the caches and
// TLBs as a busy Caddy's own work partly does). It shows why a call costs
// several times more in Caddy than in these loops: the host's path
// (pool, guest memory, wazero's call, the deadline timer) and the guest's
// code and memory are many cache lines apart. For the WAT guest, each
// deadline mechanism; for the Go apikey example, the shipped one.
func BenchmarkDecideCold(b *testing.B) {
	wat := func(b *testing.B) []byte { return wasmtest.WAT(b, "good") }
	apikey := func(b *testing.B) []byte { return wasmtest.Example(b, "apikey") }
	junk := make([]byte, 16<<20)
	for _, c := range []struct {
		name string
		bin  func(b *testing.B) []byte
		dl   deadline
	}{
		{"guest=wat-constant/deadline=" + deadlineInterrupt.String(), wat, deadlineInterrupt},
		{"guest=wat-constant/deadline=" + deadlineNone.String(), wat, deadlineNone},
		{"guest=go-apikey/deadline=" + deadlineInterrupt.String(), apikey, deadlineInterrupt},
	} {
		for _, cold := range []bool{false, true} {
			name := c.name + "/caches=warm"
			if cold {
				name = c.name + "/caches=cold"
			}
			b.Run(name, func(b *testing.B) {
				m, err := load(context.Background(), c.bin(b), Config{Config: benchConfig, Timeout: time.Second, NoCache: true}, c.dl)
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close(context.Background())
				lat := make([]time.Duration, 0, 1<<16)
				for b.Loop() {
					if cold {
						for i := 0; i < len(junk); i += 64 {
							junk[i]++
						}
					}
					start := time.Now()
					if res, err := m.Decide(&benchReq); err != nil || (res.Key != "gold:acme" && res.Key != "wat") {
						b.Fatal(res, err)
					}
					if d := time.Since(start); len(lat) < cap(lat) {
						lat = append(lat, d)
					}
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			})
		}
	}
}

// BenchmarkDeadlineCost measures what the instrumented deadline checks
// cost a call: calls to the same guest loaded with them and without any
// deadline alternate, so that both see the same load on a shared machine,
// and the p50 of each and their difference are reported.
func BenchmarkDeadlineCost(b *testing.B) {
	for _, c := range []struct {
		name string
		bin  func() []byte
		r    *abi.Request
	}{
		{"guest=go-apikey", func() []byte { return wasmtest.Example(b, "apikey") }, &benchReq},
		{"guest=go-composite", func() []byte { return wasmtest.Example(b, "composite") }, &abi.Request{Method: "GET", Path: "/v1/items", RemoteIP: "192.0.2.1",
			Headers: []abi.Header{{Name: "X-Tenant", Value: "acme"}, {Name: "X-Region", Value: "eu-west"}, {Name: "X-Client-Id", Value: "42"}}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var mods [2]*Module
			for i, dl := range []deadline{deadlineInterrupt, deadlineNone} {
				m, err := load(context.Background(), c.bin(), Config{Config: benchConfig, Timeout: time.Second, NoCache: true}, dl)
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close(context.Background())
				mods[i] = m
			}
			var lat [2][]time.Duration
			b.ReportAllocs()
			for b.Loop() {
				for i, m := range mods {
					start := time.Now()
					if _, err := m.Decide(c.r); err != nil {
						b.Fatal(err)
					}
					lat[i] = append(lat[i], time.Since(start))
				}
			}
			var p50 [2]float64
			for i := range lat {
				slices.Sort(lat[i])
				p50[i] = float64(lat[i][len(lat[i])/2].Nanoseconds())
			}
			b.ReportMetric(p50[0], "checked-p50-ns")
			b.ReportMetric(p50[1], "unchecked-p50-ns")
			b.ReportMetric(p50[0]-p50[1], "checks-ns")
		})
	}
}
