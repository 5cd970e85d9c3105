package etcdsync

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// list reads every bucket at one revision, page by page, applies what
// changed and removes what is gone. It returns the revision read.
//
// # Notes
//
// If a page fails, the pages before it stay applied. They come from etcd's
// state at a newer revision than what was in force, and the retry lists
// everything again, so the target converges without ever going back to
// older configs.
func (s *Syncer) list(ctx context.Context) (int64, error) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	again := s.listed
	s.mu.Unlock()
	if again {
		s.relists.Add(1)
	}
	start, end := bucketRange(s.prefix)
	key := start
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(s.opts.PageSize))}
		if rev != 0 {
			// Later pages read at the first page's revision: one consistent cut.
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
		resp, err := s.cli.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("etcdsync: listing %q from %q at revision %d: %w", s.prefix, key, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			s.applyKV(kv, gen)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	s.removeUnseen(gen)
	s.mu.Lock()
	s.listed = true
	s.health.Revision = rev // etcd wins, even over a newer snapshot
	s.mu.Unlock()
	s.setSynced(rev)
	return rev, nil
}

// removeUnseen deletes the buckets the list of generation gen did not see.
func (s *Syncer) removeUnseen(gen uint64) {
	var gone []string
	s.mu.Lock()
	for id, a := range s.applied {
		if a.gen != gen {
			gone = append(gone, id)
		}
	}
	for key, m := range s.rejected {
		if m.gen != gen {
			delete(s.rejected, key)
		}
	}
	s.mu.Unlock()
	for _, id := range gone {
		s.remove(id)
	}
}
