package e2e

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one endpoint the load goes to: usually one Caddy instance.
type Target struct {
	Name string
	URL  string
	// Header is set on every request, e.g. the API key that picks the bucket.
	Header http.Header
	// KeyHeader, with Keys > 0, sets this header on each request to the
	// next of Keys distinct values ("k0", "k1", ...), cycling.
	KeyHeader string
	Keys      int
	// Rate is the initial offered load in requests/s (open loop); 0 sends
	// nothing until SetRate. Ignored in closed-loop mode.
	Rate float64
}

// LoadConfig configures a load run.
type LoadConfig struct {
	Targets []Target
	// Workers per target: concurrent keep-alive connections. At a fixed
	// rate they bound how many requests can be in flight; in closed-loop
	// mode each sends its next request as soon as the last one returns.
	Workers int
	// ClosedLoop ignores the rates and sends as fast as the workers can.
	ClosedLoop bool
	// Window is the width of the counting windows; 50ms if zero.
	Window time.Duration
	// MaxDuration bounds the run's length for the window counters; 10
	// minutes if zero. Requests past it count in the last window.
	MaxDuration time.Duration
}

// Counts are the outcomes of requests.
type Counts struct {
	OK      int64 // 200
	Limited int64 // 429
	Other   int64 // any other status
	Errors  int64 // transport errors: refused, reset, timeout
	Missed  int64 // ticks the pacer could not hand to a worker in time
}

// Total returns every request sent.
func (c Counts) Total() int64 { return c.OK + c.Limited + c.Other + c.Errors }

// Failed returns requests that got neither 200 nor 429.
func (c Counts) Failed() int64 { return c.Other + c.Errors }

func (c Counts) String() string {
	return fmt.Sprintf("ok=%d limited=%d other=%d errors=%d missed=%d", c.OK, c.Limited, c.Other, c.Errors, c.Missed)
}

func (c *Counts) add(o Counts) {
	c.OK += o.OK
	c.Limited += o.Limited
	c.Other += o.Other
	c.Errors += o.Errors
	c.Missed += o.Missed
}

// window holds one target's counts in one window, updated atomically.
type window struct {
	ok, limited, other, errs, missed atomic.Int64
	// quota is the q= of the last RateLimit-Policy seen in the window
	// (0 if none): the burst the instance enforced, which tracks its
	// share of a global bucket.
	quota atomic.Int64
}

func (w *window) counts() Counts {
	return Counts{OK: w.ok.Load(), Limited: w.limited.Load(), Other: w.other.Load(), Errors: w.errs.Load(), Missed: w.missed.Load()}
}

// Load is a running load generator: per target, a pacer hands out request
// ticks at the target's rate and a pool of workers sends them over
// keep-alive connections. Counts are kept per target and per time window,
// by the time each request was sent.
type Load struct {
	cfg      LoadConfig
	start    time.Time
	targets  []*targetLoad
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	firstErr map[string]string // target -> first failure, for reports
	// maxLag is the longest a pacer tick came late, in ns: a long one
	// means this process was starved of CPU, whatever Caddy did.
	maxLag atomic.Int64
}

type targetLoad struct {
	t       Target
	rate    atomic.Uint64 // float64 bits
	changed chan struct{} // wakes the pacer on SetRate
	ticks   chan struct{}
	windows []window
	client  *http.Client
	seq     atomic.Int64 // request counter for distinct keys
}

// StartLoad starts sending load at once.
func StartLoad(cfg LoadConfig) *Load {
	if cfg.Workers <= 0 {
		// Enough to keep several hundred requests/s per target in flight
		// when a busy machine stalls a few of them for tens of ms.
		cfg.Workers = 16
	}
	if cfg.Window <= 0 {
		cfg.Window = 50 * time.Millisecond
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = 10 * time.Minute
	}
	l := &Load{cfg: cfg, stop: make(chan struct{}), firstErr: make(map[string]string)}
	n := int(cfg.MaxDuration/cfg.Window) + 1
	for _, t := range cfg.Targets {
		tl := &targetLoad{
			t:       t,
			changed: make(chan struct{}, 1),
			// A tick waits at most this many deep: a backlog larger than
			// the workers can take means the target is too slow to keep
			// the rate, which Missed reports instead of piling up.
			ticks:   make(chan struct{}, cfg.Workers),
			windows: make([]window, n),
			client: &http.Client{
				Timeout: 5 * time.Second,
				Transport: &http.Transport{
					MaxIdleConnsPerHost: cfg.Workers,
					MaxConnsPerHost:     cfg.Workers,
					IdleConnTimeout:     time.Minute,
					DisableCompression:  true,
				},
			},
		}
		tl.rate.Store(math.Float64bits(t.Rate))
		l.targets = append(l.targets, tl)
	}
	l.start = time.Now()
	for _, tl := range l.targets {
		for i := 0; i < cfg.Workers; i++ {
			l.wg.Add(1)
			go l.worker(tl)
		}
		if !cfg.ClosedLoop {
			l.wg.Add(1)
			go l.pace(tl)
		}
	}
	return l
}

// Start returns when the load started; windows count from it.
func (l *Load) Start() time.Time { return l.start }

// Elapsed returns the time since the load started.
func (l *Load) Elapsed() time.Duration { return time.Since(l.start) }

// SetRate changes target i's offered rate, from now on.
func (l *Load) SetRate(i int, rate float64) {
	tl := l.targets[i]
	tl.rate.Store(math.Float64bits(rate))
	select {
	case tl.changed <- struct{}{}:
	default:
	}
}

// pace emits ticks at the target's current rate. It counts due ticks from
// the last rate change, so the long-run rate is exact whatever the timer
// granularity.
func (l *Load) pace(tl *targetLoad) {
	defer l.wg.Done()
	defer close(tl.ticks)
	// 2ms is fine-grained next to a few hundred requests/s per target and
	// coarse enough to cost little CPU on the shared machine.
	tk := time.NewTicker(2 * time.Millisecond)
	defer tk.Stop()
	segStart := time.Now()
	rate := math.Float64frombits(tl.rate.Load())
	var sent int64
	last := segStart
	for {
		select {
		case <-l.stop:
			return
		case <-tl.changed:
			segStart, sent = time.Now(), 0
			rate = math.Float64frombits(tl.rate.Load())
		case now := <-tk.C:
			if lag := int64(now.Sub(last) - 2*time.Millisecond); lag > l.maxLag.Load() {
				l.maxLag.Store(lag) // a race between pacers only loses a near-equal value
			}
			last = now
			due := int64(now.Sub(segStart).Seconds() * rate)
			for ; sent < due; sent++ {
				select {
				case tl.ticks <- struct{}{}:
				default:
					l.window(tl, time.Now()).missed.Add(1)
				}
			}
		}
	}
}

func (l *Load) worker(tl *targetLoad) {
	defer l.wg.Done()
	for {
		if l.cfg.ClosedLoop {
			select {
			case <-l.stop:
				return
			default:
			}
		} else if _, ok := <-tl.ticks; !ok {
			return
		}
		l.do(tl)
	}
}

func (l *Load) do(tl *targetLoad) {
	sent := time.Now()
	req, err := http.NewRequest(http.MethodGet, tl.t.URL, nil)
	if err != nil {
		panic(err) // a bad URL is a bug in the test
	}
	for k, v := range tl.t.Header {
		req.Header[k] = v
	}
	if tl.t.Keys > 0 {
		n := tl.seq.Add(1)
		req.Header.Set(tl.t.KeyHeader, "k"+strconv.FormatInt(n%int64(tl.t.Keys), 10))
	}
	resp, err := tl.client.Do(req)
	w := l.window(tl, sent)
	if err != nil {
		w.errs.Add(1)
		l.noteErr(tl.t.Name, err.Error())
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if q, ok := policyQuota(resp.Header.Get("Ratelimit-Policy")); ok {
		w.quota.Store(q)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		w.ok.Add(1)
	case http.StatusTooManyRequests:
		w.limited.Add(1)
	default:
		w.other.Add(1)
		l.noteErr(tl.t.Name, resp.Status)
	}
}

func (l *Load) noteErr(target, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.firstErr[target]; !ok {
		l.firstErr[target] = msg
	}
}

func (l *Load) window(tl *targetLoad, t time.Time) *window {
	i := int(t.Sub(l.start) / l.cfg.Window)
	if i < 0 {
		i = 0
	}
	if i >= len(tl.windows) {
		i = len(tl.windows) - 1
	}
	return &tl.windows[i]
}

// Stop stops the load and waits for requests in flight.
func (l *Load) Stop() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	l.wg.Wait()
	for _, tl := range l.targets {
		tl.client.CloseIdleConnections()
	}
}

// Counts returns target i's counts for requests sent in [from, to), times
// measured from Start. i < 0 sums every target.
func (l *Load) Counts(i int, from, to time.Duration) Counts {
	var c Counts
	lo, hi := int(from/l.cfg.Window), int(to/l.cfg.Window)
	for ti, tl := range l.targets {
		if i >= 0 && ti != i {
			continue
		}
		for w := max(lo, 0); w < hi && w < len(tl.windows); w++ {
			c.add(tl.windows[w].counts())
		}
	}
	return c
}

// Series returns the admitted (200) count of each window in [from, to), summed
// over the targets in idx (every target if idx is empty).
func (l *Load) Series(from, to time.Duration, idx ...int) []int64 {
	lo, hi := int(from/l.cfg.Window), int(to/l.cfg.Window)
	var out []int64
	for w := max(lo, 0); w < hi; w++ {
		var n int64
		for ti, tl := range l.targets {
			if len(idx) > 0 && !contains(idx, ti) {
				continue
			}
			if w < len(tl.windows) {
				n += tl.windows[w].ok.Load()
			}
		}
		out = append(out, n)
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Quotas returns, for each window in [from, to), the q= of the last
// RateLimit-Policy target i answered with, carried over from earlier windows
// when a window saw none (0 before the first).
func (l *Load) Quotas(i int, from, to time.Duration) []int64 {
	tl := l.targets[i]
	lo, hi := int(from/l.cfg.Window), int(to/l.cfg.Window)
	var out []int64
	var last int64
	for w := 0; w < hi && w < len(tl.windows); w++ {
		if q := tl.windows[w].quota.Load(); q != 0 {
			last = q
		}
		if w >= lo {
			out = append(out, last)
		}
	}
	return out
}

// policyQuota parses the q= parameter of a RateLimit-Policy field value,
// e.g. `"zone";q=100;w=1`.
func policyQuota(v string) (int64, bool) {
	_, rest, ok := strings.Cut(v, ";q=")
	if !ok {
		return 0, false
	}
	if i := strings.IndexByte(rest, ';'); i >= 0 {
		rest = rest[:i]
	}
	q, err := strconv.ParseInt(rest, 10, 64)
	return q, err == nil
}

// MaxLag returns the longest delay of a pacer tick so far: how long this
// process went without CPU at worst.
func (l *Load) MaxLag() time.Duration { return time.Duration(l.maxLag.Load()) }

// Window returns the counting window width.
func (l *Load) Window() time.Duration { return l.cfg.Window }

// FirstErrors describes the first failure seen on each target.
func (l *Load) FirstErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for t, e := range l.firstErr {
		fmt.Fprintf(&b, "%s: %s; ", t, e)
	}
	return b.String()
}
