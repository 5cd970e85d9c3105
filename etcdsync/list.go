package etcdsync

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Page sizing. etcd (3.4 at least) walks the rest of the range on every
// page to count it, so a list costs O(n²/page) on the server: pages must be
// large. A page is held twice (the response and its decoded form) while
// the next one is fetched, so pages are sized by bytes rather than by
// count, to bound the memory a list takes whatever the key lengths.
const (
	// firstPageBytesPerKey sizes the first page, before the key and value
	// sizes are known: PageBytes/256 keys. Canonical values with short IDs
	// take well under 256 bytes, so the first page stays within PageBytes
	// unless values are unusually large, and it is big enough that a
	// first page of a hundred thousand keys does not add a page's worth
	// of O(rest) work on the server.
	firstPageBytesPerKey = 256
	// minPageKeys and maxPageKeys bound an adaptive page.
	minPageKeys = 1_000
	maxPageKeys = 1_000_000
)

// list reads every plan, then every bucket, at one revision, page by page,
// applies what changed and removes what is gone. It returns the revision
// read.
//
// # Notes
//
// If a page fails, the pages before it stay applied. They come from etcd's
// state at a newer revision than what was in force, and the retry lists
// everything again, so the target converges without ever going back to
// older configs.
//
// Pages are applied as they arrive, while the next one is fetched, so a
// list takes about as long as the slower of the two.
func (s *Syncer) list(ctx context.Context) (int64, error) {
	start := time.Now()
	s.mu.Lock()
	s.gen++
	if uint8(s.gen) == 0 {
		// The table keeps 8 bits of generation: restart them, so that no
		// entry left from 256 lists ago passes for seen.
		s.applied.resetGens()
		s.gen++
	}
	gen := s.gen
	again := s.listed
	clear(s.waiting) // the list finds them again
	s.mu.Unlock()
	// Plans and buckets are read at one revision, plans first: a plan
	// missing from the list is missing.
	s.planHorizon, s.unsure = math.MaxInt64, nil
	if again {
		s.relists.Add(1)
	}
	// Plans first: the buckets of the same cut that name them find them.
	rev, err := s.listRange(ctx, s.plansPrefix, 0, false, func(kv *mvccpb.KeyValue) { s.applyPlanKV(kv, gen) })
	if err != nil {
		return 0, err
	}
	if _, err := s.listRange(ctx, s.prefix, rev, true, func(kv *mvccpb.KeyValue) { s.applyKV(kv, gen) }); err != nil {
		return 0, err
	}
	s.removeUnseen(gen)
	now := time.Now()
	s.mu.Lock()
	first := !s.listed
	s.listed = true
	s.health.Revision = rev // etcd wins, even over a newer snapshot
	if first {
		s.health.FirstSync = now
	}
	n, np := s.applied.Len(), len(s.plans)+len(s.orphans)
	s.mu.Unlock()
	s.setSynced(rev)
	if first {
		s.log.Info("etcdsync: first list from etcd applied", zap.Int("buckets", n), zap.Int("plans", np),
			zap.Int64("revision", rev), zap.Duration("took", now.Sub(start)))
		close(s.listedCh)
	}
	return rev, nil
}

// page is one list response, or the error that ended the list.
type page struct {
	resp *clientv3.GetResponse
	key  string
	err  error
}

// listRange lists every key under prefix at rev (0: the current revision)
// and calls apply for each, in key order. It returns the revision read.
// With reserve, the first page's count presizes the bucket table.
func (s *Syncer) listRange(ctx context.Context, prefix string, rev int64, reserve bool, apply func(*mvccpb.KeyValue)) (int64, error) {
	start, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	fctx, cancel := context.WithCancel(ctx)
	pages := make(chan page)
	var wg sync.WaitGroup
	wg.Add(1)
	go s.fetch(fctx, &wg, start, end, rev, pages)
	defer func() {
		cancel()
		wg.Wait()
	}()
	first := true
	for p := range pages {
		if p.err != nil {
			return 0, fmt.Errorf("etcdsync: listing %q from %q at revision %d: %w", prefix, p.key, rev, p.err)
		}
		if rev == 0 {
			rev = p.resp.Header.Revision
		}
		if first && reserve && len(p.resp.Kvs) > 0 {
			s.reserve(p.resp)
		}
		first = false
		for _, kv := range p.resp.Kvs {
			apply(kv)
		}
	}
	return rev, ctx.Err()
}

// reserve presizes the bucket table from a first page: its Count is the
// number of keys in the whole range.
func (s *Syncer) reserve(resp *clientv3.GetResponse) {
	idBytes := 0
	for _, kv := range resp.Kvs {
		idBytes += len(kv.Key) - len(s.prefix)
	}
	idBytes = idBytes/len(resp.Kvs) + 1
	s.mu.Lock()
	if more := int(min(resp.Count, maxReserve)) - s.applied.Len(); more > 0 {
		s.applied.reserve(more, idBytes)
	}
	s.mu.Unlock()
}

// maxReserve bounds what one count from etcd may presize; the table grows
// past it as usual.
const maxReserve = 1 << 27

// fetch reads the pages of [key, end) at rev and sends them to out, which
// it closes at the end. Each page is requested as soon as the one before
// is handed over, so etcd works while the syncer applies.
func (s *Syncer) fetch(ctx context.Context, wg *sync.WaitGroup, key, end string, rev int64, out chan<- page) {
	defer wg.Done()
	defer close(out)
	pg := newPager(s.cli, key, end, rev, s.opts.PageBytes, s.opts.PageSize)
	for {
		rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
		from := pg.key
		resp, err := pg.next(rctx)
		cancel()
		select {
		case out <- page{resp: resp, key: from, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || pg.done() {
			return
		}
	}
}

// pager reads the keys of [key, end) at one revision (the first page's,
// unless one is given), a page per next call. Pages aim at pageBytes of
// keys and values, sized from the keys seen so far, or hold a fixed
// pageSize keys if that is set.
type pager struct {
	kv          clientv3.KV
	key, end    string
	rev         int64
	pageBytes   int
	pageSize    int
	limit       int64
	keys, bytes int64
	last        bool
}

func newPager(kv clientv3.KV, key, end string, rev int64, pageBytes, pageSize int) *pager {
	if pageBytes <= 0 {
		pageBytes = defaultPageBytes
	}
	limit := int64(max(pageBytes/firstPageBytesPerKey, minPageKeys))
	if pageSize > 0 {
		limit = int64(pageSize)
	}
	return &pager{kv: kv, key: key, end: end, rev: rev, pageBytes: pageBytes, pageSize: pageSize, limit: limit}
}

// done tells whether the last page has been read.
func (p *pager) done() bool { return p.last }

// next reads the next page. After an error the pager stays where it was.
func (p *pager) next(ctx context.Context) (*clientv3.GetResponse, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(p.end), clientv3.WithLimit(p.limit)}
	if p.rev != 0 {
		// Later pages read at the first page's revision: one consistent cut.
		opts = append(opts, clientv3.WithRev(p.rev))
	}
	resp, err := p.kv.Get(ctx, p.key, opts...)
	if err != nil {
		return nil, err
	}
	if p.rev == 0 {
		p.rev = resp.Header.Revision
	}
	if !resp.More || len(resp.Kvs) == 0 {
		p.last = true
		return resp, nil
	}
	for _, kv := range resp.Kvs {
		p.bytes += int64(len(kv.Key) + len(kv.Value))
	}
	p.keys += int64(len(resp.Kvs))
	if p.pageSize <= 0 {
		p.limit = min(max(int64(p.pageBytes)*p.keys/max(p.bytes, 1), minPageKeys), maxPageKeys)
	}
	p.key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	return resp, nil
}

// removeUnseen deletes the buckets and plans the list of generation gen
// did not see. Buckets go first: a plan that loses its last bucket here
// can go too.
func (s *Syncer) removeUnseen(gen uint64) {
	var gone []string
	type plan struct {
		name string
		spec Spec
	}
	var plansGone []plan
	s.mu.Lock()
	s.applied.each(func(id []byte, _ uint32, g uint8) {
		if g != uint8(gen) {
			gone = append(gone, string(id))
		}
	})
	for key, m := range s.rejected {
		if m.gen != gen {
			delete(s.rejected, key)
		}
	}
	for name, p := range s.plans {
		if p.gen != gen {
			plansGone = append(plansGone, plan{name, p.spec})
		}
	}
	s.mu.Unlock()
	for _, id := range gone {
		s.remove(id)
	}
	for _, p := range plansGone {
		s.removePlan(p.name, p.spec)
	}
}
