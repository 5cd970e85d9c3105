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
//	{"v":1,"d":{"api":1500000000,"login":2000000}}
//
// d maps bucket IDs to demand in 1/DemandScale tokens per second; buckets
// with no demand are absent. Readers ignore unknown fields, so a later
// version may add some; it bumps v only for a change older readers must not
// misread.
const reportVersion = 1

type wireReport struct {
	V int               `json:"v"`
	D map[string]uint64 `json:"d"`
}

// demandEntry is one bucket's demand in a report being built.
type demandEntry struct {
	id     string
	demand uint64
}

// encodeReport encodes the entries with the highest demand first, as many
// as fit in maxBytes. It returns the value and how many entries it holds.
// The order is total (demand, then ID), so the same demand always encodes
// to the same bytes and an unchanged report can be recognised and skipped.
func encodeReport(entries []demandEntry, maxBytes int) ([]byte, int) {
	slices.SortFunc(entries, func(a, b demandEntry) int {
		if c := cmp.Compare(b.demand, a.demand); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	buf := make([]byte, 0, 64)
	buf = append(buf, `{"v":`...)
	buf = strconv.AppendInt(buf, reportVersion, 10)
	buf = append(buf, `,"d":{`...)
	const closing = len("}}")
	n := 0
	for _, e := range entries {
		if e.demand == 0 {
			break // sorted: the rest are zero too
		}
		key, _ := json.Marshal(e.id) // a string always marshals
		need := len(key) + 1 + len(strconv.AppendUint(nil, e.demand, 10))
		if n > 0 {
			need++ // comma
		}
		if len(buf)+need+closing > maxBytes {
			break
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, key...)
		buf = append(buf, ':')
		buf = strconv.AppendUint(buf, e.demand, 10)
		n++
	}
	buf = append(buf, "}}"...)
	return buf, n
}

// decodeReport parses a member key's value. An empty value is a member that
// has not reported yet: no demand.
func decodeReport(value []byte) (map[string]uint64, error) {
	if len(bytes.TrimSpace(value)) == 0 {
		return nil, nil
	}
	var w wireReport
	if err := json.Unmarshal(value, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidReport, err)
	}
	if w.V < 1 {
		return nil, fmt.Errorf("%w: version %d; want >= 1", ErrInvalidReport, w.V)
	}
	return w.D, nil
}
