package global

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// reportVersion is the schema of a member key's value:
//
//	{"v":1,"d":{"api":1500000000,"login":2000000},"s":3,"r":{"api":49}}
//
// d maps bucket IDs to demand in 1/DemandScale tokens per second; buckets
// with no demand are absent. s and r, absent until the instance first gives
// tokens up, are its latest release (see release.go): r maps buckets to the
// whole tokens that its shares' lower bursts took away, and s numbers the
// releases, so that a reader counts each one once. Readers ignore unknown
// fields, so a later version may add some; it bumps v only for a change
// older readers must not misread.
const reportVersion = 1

type wireReport struct {
	V int               `json:"v"`
	D map[string]uint64 `json:"d"`
	S uint64            `json:"s"`
	R map[string]uint64 `json:"r"`
}

// report is a decoded member key value.
type report struct {
	demand map[string]uint64 // nil: no demand
	seq    uint64            // the latest release's number, 0 if none yet
	freed  map[string]uint64 // that release: whole tokens per bucket
}

// demandEntry is one bucket's demand (or released tokens) in a report being
// built.
type demandEntry struct {
	id     string
	demand uint64
}

// releaseNote is the latest release an instance reports.
type releaseNote struct {
	seq    uint64
	tokens []demandEntry
}

// encodeReport encodes the entries with the highest demand first, as many
// as fit in maxBytes. It returns the value and how many entries it holds.
// The order is total (demand, then ID), so the same demand always encodes
// to the same bytes and an unchanged report can be recognised and skipped.
func encodeReport(entries []demandEntry, maxBytes int) ([]byte, int) {
	return encodeReportWith(entries, releaseNote{}, maxBytes)
}

// encodeReportWith is encodeReport with the latest release: its entries
// come first, in at most an eighth of maxBytes (a release is one batch of
// buckets; the largest releases are kept), and the demand fills the rest.
func encodeReportWith(entries []demandEntry, rel releaseNote, maxBytes int) ([]byte, int) {
	buf := make([]byte, 0, 64)
	buf = append(buf, `{"v":`...)
	buf = strconv.AppendInt(buf, reportVersion, 10)
	const closing = len("}}")
	var tail []byte
	if rel.seq != 0 {
		tail = append(tail, `,"s":`...)
		tail = strconv.AppendUint(tail, rel.seq, 10)
		tail = append(tail, `,"r":{`...)
		tail, _ = appendEntries(tail, rel.tokens, maxBytes/8-len(tail)-1)
		tail = append(tail, '}')
	}
	buf = append(buf, `,"d":{`...)
	buf, n := appendEntries(buf, entries, maxBytes-len(buf)-closing-len(tail))
	buf = append(buf, '}')
	buf = append(buf, tail...)
	buf = append(buf, '}')
	return buf, n
}

// appendEntries appends the nonzero entries, largest first, as the members
// of a JSON object, as many as fit in room bytes; it sorts entries. It
// returns the buffer and how many entries it holds.
func appendEntries(buf []byte, entries []demandEntry, room int) ([]byte, int) {
	slices.SortFunc(entries, func(a, b demandEntry) int {
		if c := cmp.Compare(b.demand, a.demand); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	n, used := 0, 0
	for _, e := range entries {
		if e.demand == 0 {
			break // sorted: the rest are zero too
		}
		key, _ := json.Marshal(e.id) // a string always marshals
		need := len(key) + 1 + len(strconv.AppendUint(nil, e.demand, 10))
		if n > 0 {
			need++ // comma
		}
		if used+need > room {
			break
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, key...)
		buf = append(buf, ':')
		buf = strconv.AppendUint(buf, e.demand, 10)
		used += need
		n++
	}
	return buf, n
}

// decodeReport parses a member key's value and returns its demand. An empty
// value is a member that has not reported yet: no demand.
func decodeReport(value []byte) (map[string]uint64, error) {
	r, err := decodeFullReport(value)
	return r.demand, err
}

// decodeFullReport parses a member key's value: demand and latest release.
func decodeFullReport(value []byte) (report, error) {
	if len(bytes.TrimSpace(value)) == 0 {
		return report{}, nil
	}
	var w wireReport
	if err := json.Unmarshal(value, &w); err != nil {
		return report{}, fmt.Errorf("%w: %w", ErrInvalidReport, err)
	}
	if w.V < 1 {
		return report{}, fmt.Errorf("%w: version %d; want >= 1", ErrInvalidReport, w.V)
	}
	return report{demand: w.D, seq: w.S, freed: w.R}, nil
}
