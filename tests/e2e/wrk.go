package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// WrkBin is Debian's wrk, installed by .ci/run.
const WrkBin = "/usr/bin/wrk"

// DistinctKeysLua is a wrk script that sends each request with a different
// X-Key header, cycling through keys distinct values (set by the
// wrk.keys global, see WrkOptions.Keys). Each wrk thread starts at its own
// offset so that threads do not walk the same keys in step.
const DistinctKeysLua = `
local n = 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  keys = tonumber(args[1]) or 100000
  n = (id or 0) * 7919
end
function request()
  n = n + 1
  return wrk.format(nil, nil, {["X-Key"] = "k" .. (n % keys)})
end
`

// WrkOptions configures one wrk run.
type WrkOptions struct {
	URL         string
	Threads     int
	Connections int
	Duration    time.Duration
	// Keys > 0 runs DistinctKeysLua over that many keys.
	Keys int
	// Headers are fixed "Name: value" header fields, e.g. the hot key.
	Headers []string
	// CPUs, if set, pins wrk with taskset -c (e.g. "1").
	CPUs string
}

// WrkResult is what wrk reported.
type WrkResult struct {
	Requests    int64
	Duration    time.Duration
	RPS         float64
	Non2xx      int64
	SocketError string
	Output      string
}

var (
	wrkTotal  = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSock   = regexp.MustCompile(`Socket errors:.*`)
)

// RunWrk runs wrk and parses its summary.
func RunWrk(o WrkOptions) (WrkResult, error) {
	args := []string{"-t", strconv.Itoa(o.Threads), "-c", strconv.Itoa(o.Connections),
		"-d", fmt.Sprintf("%ds", int(o.Duration.Seconds())),
		// wrk's 2s default counts a request stalled by a busy shared
		// machine as a socket error; such stalls are noise, not failures.
		"--timeout", "10s"}
	for _, h := range o.Headers {
		args = append(args, "-H", h)
	}
	if o.Keys > 0 {
		dir, err := os.MkdirTemp("", "edgelimit-wrk-")
		if err != nil {
			return WrkResult{}, err
		}
		defer os.RemoveAll(dir)
		script := filepath.Join(dir, "keys.lua")
		if err := os.WriteFile(script, []byte(DistinctKeysLua), 0o644); err != nil {
			return WrkResult{}, err
		}
		args = append(args, "-s", script)
	}
	args = append(args, o.URL)
	if o.Keys > 0 {
		args = append(args, "--", strconv.Itoa(o.Keys))
	}
	bin := WrkBin
	if o.CPUs != "" {
		args = append([]string{"-c", o.CPUs, WrkBin}, args...)
		bin = "taskset"
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	res := WrkResult{Output: string(out)}
	if err != nil {
		return res, fmt.Errorf("e2e: %s %s: %w: %s", bin, strings.Join(args, " "), err, out)
	}
	m := wrkTotal.FindStringSubmatch(res.Output)
	r := wrkRPS.FindStringSubmatch(res.Output)
	if m == nil || r == nil {
		return res, fmt.Errorf("e2e: unexpected wrk output: %s", out)
	}
	res.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	d, _ := time.ParseDuration(m[2] + m[3])
	res.Duration = d
	res.RPS, _ = strconv.ParseFloat(r[1], 64)
	if n := wrkNon2xx.FindStringSubmatch(res.Output); n != nil {
		res.Non2xx, _ = strconv.ParseInt(n[1], 10, 64)
	}
	res.SocketError = wrkSock.FindString(res.Output)
	return res, nil
}
