package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// adminClient asks a running Caddy's admin API (see adminapi.go), at the
// address `caddy reload` would use.
type adminClient struct {
	address string
	asJSON  bool
}

func (c *adminClient) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.address, "address", "", "the admin API address of the running Caddy (default localhost:2019)")
	f.BoolVar(&c.asJSON, "json", false, "print the admin API's JSON as it is")
}

// do sends the request and decodes the JSON answer into v, or prints it
// as it is with --json (then print is not called).
func (c *adminClient) do(out io.Writer, method, uri string, body url.Values, v any, print func() error) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(c.address, nil, "", "")
	if err != nil {
		return err
	}
	var hdr http.Header
	var rd io.Reader
	if body != nil {
		hdr = http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
		rd = strings.NewReader(body.Encode())
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, hdr, rd)
	if err != nil {
		// AdminAPIRequest turns error statuses into errors carrying the
		// admin API's JSON error body.
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if c.asJSON {
		_, err = out.Write(b)
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("reading the admin API's answer from %s: %w", addr, err)
	}
	return print()
}

func newInspectCommand() *cobra.Command {
	var (
		ac        adminClient
		zone, key string
	)
	cmd := &cobra.Command{
		Use:   "inspect <bucket id> | inspect --zone <zone> --key <key>",
		Short: "Shows a bucket's config and tokens, live, from a running Caddy",
		Long: `Shows, from a running Caddy's admin API, where an explicit bucket's config
comes from, the config in force, its tokens and the time until it is full,
and for a global bucket the fleet's members with their demands and shares.

With --zone and --key it looks up the key as the zone's handlers would: the
explicit bucket of that name, else the zone's dynamic bucket, without making
one. The bucket ID and the key go in the request body, which Caddy does not
log; the shell's history and the process list do show them.`,
		Args: cobra.MaximumNArgs(1),
	}
	ac.flags(cmd)
	cmd.Flags().StringVar(&zone, "zone", "", "look up a key in this zone")
	cmd.Flags().StringVar(&key, "key", "", "the key to look up, as the zone's policy makes it")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cmd.SilenceUsage = true
		out := cmd.OutOrStdout()
		switch {
		case len(args) == 1 && zone == "" && key == "":
			var b bucketInfo
			return ac.do(out, http.MethodPost, adminBucket, url.Values{"id": {args[0]}}, &b, func() error { return printBucketInfo(out, b) })
		case len(args) == 0 && zone != "" && key != "":
			var k keyInfo
			return ac.do(out, http.MethodPost, adminKeys+url.PathEscape(zone), url.Values{"key": {key}}, &k, func() error { return printKeyInfo(out, k) })
		}
		return errors.New("give a bucket ID, or --zone and --key (not both)")
	}
	return cmd
}

func newStatusCommand() *cobra.Command {
	var ac adminClient
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Shows a running Caddy's etcd sync, global fleet, zones and WASM modules",
		Args:  cobra.NoArgs,
	}
	ac.flags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cmd.SilenceUsage = true
		out := cmd.OutOrStdout()
		var s statusInfo
		return ac.do(out, http.MethodGet, adminStatus, nil, &s, func() error { return printStatus(out, s) })
	}
	return cmd
}

// seconds formats a time in seconds as a duration, to the millisecond.
func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

// perSecond is the rate as people read it; exact, for the rate row, adds
// the engine's fraction (a split share's can look odd: 3/20ms).
func (c configInfo) perSecond() string { return fmt.Sprintf("%.6g/s", c.RatePerSecond) }

func (c configInfo) exact() string { return fmt.Sprintf("%s (exactly %s)", c.perSecond(), c.Rate) }

// printState prints the rows every bucket has.
func printState(tw io.Writer, s bucketState) {
	fmt.Fprintf(tw, "rate\t%s\n", s.Config.exact())
	fmt.Fprintf(tw, "burst\t%d\n", s.Config.Burst)
	fmt.Fprintf(tw, "shadow\t%v\n", s.Config.Shadow)
	fmt.Fprintf(tw, "tokens\t%d\n", s.Tokens)
	fmt.Fprintf(tw, "until full\t%s\n", seconds(s.UntilFullSeconds))
}

func printBucketInfo(out io.Writer, b bucketInfo) error {
	tw := newTabWriter(out)
	fmt.Fprintf(tw, "bucket\t%s\n", b.ID)
	fmt.Fprintf(tw, "source\t%s (configs current to etcd revision %d)\n", b.Source, b.EtcdRevision)
	plan := b.Plan
	if plan == "" {
		plan = "-"
	}
	fmt.Fprintf(tw, "plan\t%s\n", plan)
	fmt.Fprintf(tw, "scope\t%s\n", b.Scope)
	printState(tw, b.bucketState)
	if g := b.Global; g != nil {
		fmt.Fprintf(tw, "global\t%s; fleet limit %s burst %d; this instance's share %s burst %d; its demand %.6g/s\n",
			g.State, g.Fleet.perSecond(), g.Fleet.Burst, g.Share.perSecond(), g.Share.Burst, g.Demand)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if b.Global == nil {
		return nil
	}
	return table(out, "MEMBER\tDEMAND/S\tSHARE\tSHARE BURST", func(tw io.Writer) {
		for _, m := range b.Global.Members {
			id := m.ID
			if m.Self {
				id += " (this one)"
			}
			fmt.Fprintf(tw, "%s\t%.6g\t%s\t%d\n", id, m.Demand, m.Share.perSecond(), m.Share.Burst)
		}
	})
}

func newTabWriter(out io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(out, 0, 4, 2, ' ', 0) }

// table prints a blank line, then the header and the rows, aligned.
func table(out io.Writer, header string, rows func(tw io.Writer)) error {
	fmt.Fprintln(out)
	tw := newTabWriter(out)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

func printKeyInfo(out io.Writer, k keyInfo) error {
	tw := newTabWriter(out)
	fmt.Fprintf(tw, "zone\t%s\n", k.Zone)
	bucket := k.Bucket
	switch {
	case k.Bucket == "explicit":
		bucket += " (from etcd; the key names it)"
	case k.Held:
		bucket += " (in memory)"
	default:
		bucket += " (none in memory: the next request gets a full bucket)"
	}
	fmt.Fprintf(tw, "bucket\t%s\n", bucket)
	printState(tw, k.bucketState)
	return tw.Flush()
}

func printStatus(out io.Writer, s statusInfo) error {
	tw := newTabWriter(out)
	fmt.Fprintf(tw, "instance\t%s\n", s.InstanceID)
	fmt.Fprintf(tw, "explicit buckets\t%d\n", s.ExplicitBuckets)
	if e := s.Etcd; e != nil {
		conn := "connected"
		if !e.Connected {
			conn = "DISCONNECTED (serving the last synced configs)"
		}
		age := "never"
		if e.LastSyncAgeSeconds != nil {
			age = seconds(*e.LastSyncAgeSeconds) + " ago"
		}
		first := "done"
		if e.FirstSyncPending {
			first = "PENDING"
		}
		fmt.Fprintf(tw, "etcd\t%s, revision %d, last sync %s, first sync %s\n", conn, e.Revision, age, first)
		fmt.Fprintf(tw, "etcd configs\t%d buckets, %d plans, %d rejected, %d relists\n", e.Buckets, e.Plans, e.Rejected, e.Relists)
		if e.LastError != "" {
			fmt.Fprintf(tw, "etcd last error\t%s\n", e.LastError)
		}
	} else {
		fmt.Fprintln(tw, "etcd\tnot configured (zone templates only)")
	}
	if g := s.Global; g != nil {
		fmt.Fprintf(tw, "global\t%s, %d members (%s), %d global buckets, safe share divisor %d\n",
			g.State, len(g.Members), strings.Join(g.Members, ", "), g.Buckets, g.SafeMembers)
		if g.OmittedBuckets > 0 || g.UnleasedKeys > 0 || g.IgnoredReports > 0 {
			fmt.Fprintf(tw, "global warnings\t%d buckets left out of the report, %d unleased member keys, %d ignored reports\n",
				g.OmittedBuckets, g.UnleasedKeys, g.IgnoredReports)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Zones) > 0 {
		err := table(out, "ZONE\tPOLICY\tTEMPLATE\tBURST\tBUCKETS\tMAX_BUCKETS\tEVICTIONS\tDISPLACED", func(tw io.Writer) {
			for _, z := range s.Zones {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", z.Name, z.Policy, z.Template.perSecond(), z.Template.Burst, z.Buckets, z.MaxBuckets, z.Evictions, z.Displaced)
			}
		})
		if err != nil {
			return err
		}
	}
	if len(s.WASM) == 0 {
		return nil
	}
	return table(out, "WASM MODULE\tLIVE\tIDLE\tPENDING\tSPARE\tGUEST_CALLS\tREPLACED\tERRORS", func(tw io.Writer) {
		for _, w := range s.WASM {
			var errs []string
			for kind, n := range w.Errors {
				if n > 0 {
					errs = append(errs, fmt.Sprintf("%s=%d", kind, n))
				}
			}
			slices.Sort(errs)
			e := strings.Join(errs, " ")
			if e == "" {
				e = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", w.Module, w.Live, w.Idle, w.Pending, w.Spare, w.GuestCalls, w.Replaced, e)
		}
	})
}
