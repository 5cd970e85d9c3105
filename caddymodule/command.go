package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/edgelimit/edgelimit/etcdsync"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "edge-limit",
		Usage: "buckets list|get|put|delete [flags] | plans list|get|put|delete [flags] | policy test <module.wasm> [flags] | inspect <id> | inspect --zone <z> --key <k> | status",
		Short: "Manages edgelimit's explicit buckets and plans in etcd, checks WASM policies, shows live state",
		Long: `Manages the explicit buckets that every edge_limit instance enforces,
and the plans that buckets can take their config from.

The buckets live in etcd under <prefix>buckets/<id> as JSON, e.g.
{"rate":100,"per":"1s","burst":200}, or {"plan":"gold"} for a bucket on
the plan at <prefix>plans/gold; plain etcdctl put/del works as well.
These commands apply the same validation as the instances, so a value they
write is a value every instance accepts.

  caddy edge-limit buckets list
  caddy edge-limit buckets get acme
  caddy edge-limit buckets put acme --rate 100 --per 1s --burst 200
  caddy edge-limit buckets put acme '{"rate":10,"per":"1m","burst":20,"shadow":true}'
  caddy edge-limit buckets put acme --plan gold
  caddy edge-limit buckets delete acme

  caddy edge-limit plans put gold --rate 100 --burst 200
  caddy edge-limit plans list
  caddy edge-limit plans get gold
  caddy edge-limit plans delete gold [--force]

"policy test" loads a WASM key policy as the policy wasm directive does and
prints its verdict for one request (no etcd needed):

  caddy edge-limit policy test apikey.wasm --config "acme=gold default=free" \
      --header "X-API-Key: acme_123"

"inspect" and "status" ask a running Caddy's admin API (--address, as
caddy reload takes it; localhost:2019 by default) for live state:

  caddy edge-limit inspect acme                  # config, source, tokens; a global bucket's fleet shares
  caddy edge-limit inspect --zone per_ip --key 203.0.113.7
  caddy edge-limit status                        # etcd sync, global fleet, zones, WASM modules

Connection flags default from EDGELIMIT_ETCD_ENDPOINTS, EDGELIMIT_ETCD_PREFIX,
EDGELIMIT_ETCD_USERNAME and EDGELIMIT_ETCD_PASSWORD (prefer the variable to
--password, which other users can see in the process list).`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(newBucketsCommand(), newPlansCommand(), newPolicyCommand(), newInspectCommand(), newStatusCommand())
		},
	})
}

// cliConn holds the connection flags of the edge-limit subcommands.
type cliConn struct {
	endpoints  []string
	prefix     string
	dial       time.Duration
	timeout    time.Duration
	username   string
	password   string
	ca         string
	cert       string
	key        string
	serverName string
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (c *cliConn) flags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringSliceVar(&c.endpoints, "endpoints", strings.Split(envOr("EDGELIMIT_ETCD_ENDPOINTS", "http://127.0.0.1:2379"), ","), "etcd client URLs, comma-separated")
	f.StringVar(&c.prefix, "prefix", envOr("EDGELIMIT_ETCD_PREFIX", etcdsync.DefaultPrefix), "key prefix")
	f.DurationVar(&c.dial, "dial-timeout", 5*time.Second, "time to connect to etcd")
	f.DurationVar(&c.timeout, "timeout", 10*time.Second, "time for the whole command")
	f.StringVar(&c.username, "username", os.Getenv("EDGELIMIT_ETCD_USERNAME"), "etcd user")
	f.StringVar(&c.password, "password", os.Getenv("EDGELIMIT_ETCD_PASSWORD"), "etcd password (prefer EDGELIMIT_ETCD_PASSWORD)")
	f.StringVar(&c.ca, "cacert", "", "CA file that verifies etcd's certificate")
	f.StringVar(&c.cert, "cert", "", "client certificate file")
	f.StringVar(&c.key, "key", "", "client key file")
	f.StringVar(&c.serverName, "server-name", "", "name expected in etcd's certificate")
}

// admin connects and returns an Admin; close the client when done.
func (c *cliConn) admin() (*etcdsync.Admin, *clientv3.Client, error) {
	cc := etcdsync.ClientConfig{
		Endpoints: c.endpoints, DialTimeout: c.dial, Username: c.username, Password: c.password,
		CAFile: c.ca, CertFile: c.cert, KeyFile: c.key, ServerName: c.serverName,
	}
	// Connect fails at once on a refused port or certificate; Check on
	// missing credentials or permissions: each with an error that says so.
	cli, err := cc.Connect(nil)(context.Background())
	if err != nil {
		return nil, nil, err
	}
	if err := cc.Check(context.Background(), cli, c.prefix); err != nil {
		cli.Close()
		return nil, nil, err
	}
	return etcdsync.NewAdmin(cli, c.prefix), cli, nil
}

// run wraps a subcommand body with the connection and the timeout.
func (c *cliConn) run(f func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		cmd.SilenceUsage = true // the error says what is wrong; usage would bury it
		a, cli, err := c.admin()
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
		defer cancel()
		err = f(ctx, a, cmd.OutOrStdout())
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return c.timedOut(cli)
		}
		return err
	}
}

// timedOut explains a command that ran out of --timeout, which the etcd
// client reports only as "context deadline exceeded": either etcd never
// answered, or it answered too slowly for the work asked.
func (c *cliConn) timedOut(cli *clientv3.Client) error {
	eps := strings.Join(c.endpoints, ",")
	if cli.ActiveConnection().GetState() != connectivity.Ready {
		return fmt.Errorf("%w: etcd at %s could not be reached within %v (--timeout)", etcdsync.ErrUnavailable, eps, c.timeout)
	}
	return fmt.Errorf("%w: etcd at %s was reached but the command did not finish within %v (--timeout)", etcdsync.ErrUnavailable, eps, c.timeout)
}

func newBucketsCommand() *cobra.Command {
	var conn cliConn
	root := &cobra.Command{
		Use:   "buckets",
		Short: "Lists, reads, writes and deletes explicit buckets",
	}
	conn.flags(root)

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "Lists every bucket, sorted by ID",
		Args:  cobra.NoArgs,
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	list.RunE = conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
		bs, err := a.ListBuckets(ctx)
		if err != nil {
			return err
		}
		return printBuckets(out, bs, asJSON)
	})

	get := &cobra.Command{
		Use:   "get <id>",
		Short: "Prints one bucket's spec and etcd revision",
		Args:  cobra.ExactArgs(1),
	}
	get.RunE = func(cmd *cobra.Command, args []string) error {
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			spec, rev, err := a.GetBucket(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "%s\nmod_revision: %d\n", spec, rev)
			return err
		})(cmd, args)
	}

	var (
		nums           specFlags
		scope          string
		plan           string
		create, update bool
	)
	putCmd := &cobra.Command{
		Use:   "put <id> [<json spec>]",
		Short: "Creates or replaces a bucket (keeping its tokens on every instance)",
		Long: `Creates or replaces a bucket, from flags or from a JSON spec.
With --plan, the bucket takes its whole config from that plan
(see "plans"). With --create it fails if the bucket exists; with --update,
if it does not.`,
		Args: cobra.RangeArgs(1, 2),
	}
	nums.register(putCmd)
	pf := putCmd.Flags()
	pf.StringVar(&scope, "scope", string(etcdsync.ScopeLocal), "local or global")
	pf.StringVar(&plan, "plan", "", "take the config from this plan instead of --rate, --per, --burst, --shadow")
	pf.BoolVar(&create, "create", false, "fail if the bucket exists")
	pf.BoolVar(&update, "update", false, "fail if the bucket does not exist")
	putCmd.RunE = func(cmd *cobra.Command, args []string) error {
		if create && update {
			return fmt.Errorf("%w: --create and --update are exclusive", ErrInvalidConfig)
		}
		spec, fromJSON, err := jsonSpec(cmd, args, etcdsync.DecodeSpec, slices.Concat(numberFlags, []string{"scope", "plan"})...)
		switch {
		case err != nil:
			return err
		case fromJSON:
		case plan != "":
			if changed := changedFlags(cmd, slices.Concat(numberFlags, []string{"scope"})...); changed != "" {
				return fmt.Errorf("%w: --plan %s gives the whole config; drop %s", ErrInvalidConfig, plan, changed)
			}
			spec = etcdsync.Spec{Plan: plan}
		default:
			if spec, err = nums.spec(cmd, "or give a JSON spec, or --plan"); err != nil {
				return err
			}
			spec.Scope = etcdsync.Scope(scope)
		}
		if !fromJSON {
			if _, err := etcdsync.EncodeSpec(spec); err != nil {
				return err
			}
		}
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			var err error
			switch {
			case create:
				err = a.CreateBucket(ctx, args[0], spec)
			case update:
				err = a.UpdateBucket(ctx, args[0], spec)
			default:
				err = a.PutBucket(ctx, args[0], spec)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "%s %s\n", args[0], spec)
			return err
		})(cmd, args)
	}

	del := &cobra.Command{
		Use:     "delete <id>",
		Aliases: []string{"del"},
		Short:   "Deletes a bucket; its keys fall back to the handlers' unknown behaviour",
		Args:    cobra.ExactArgs(1),
	}
	del.RunE = func(cmd *cobra.Command, args []string) error {
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			if err := a.DeleteBucket(ctx, args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(out, "deleted %s\n", args[0])
			return err
		})(cmd, args)
	}

	root.AddCommand(list, get, putCmd, del)
	return root
}

func newPlansCommand() *cobra.Command {
	var conn cliConn
	root := &cobra.Command{
		Use:   "plans",
		Short: "Lists, reads, writes and deletes plans, the configs buckets name with {\"plan\":...}",
	}
	conn.flags(root)

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "Lists every plan, sorted by name",
		Args:  cobra.NoArgs,
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	list.RunE = conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
		ps, err := a.ListPlans(ctx)
		if err != nil {
			return err
		}
		return printPlans(out, ps, asJSON)
	})

	get := &cobra.Command{
		Use:   "get <name>",
		Short: "Prints one plan's spec and etcd revision",
		Args:  cobra.ExactArgs(1),
	}
	get.RunE = func(cmd *cobra.Command, args []string) error {
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			spec, rev, err := a.GetPlan(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "%s\nmod_revision: %d\n", planJSON(spec), rev)
			return err
		})(cmd, args)
	}

	var nums specFlags
	putCmd := &cobra.Command{
		Use:   "put <name> [<json spec>]",
		Short: "Creates or changes a plan; every bucket on it takes the new config, keeping its tokens",
		Long: `Creates or changes a plan, from flags or from a JSON spec such as
{"rate":100,"per":"1s","burst":200}. One etcd write re-configures every
bucket on the plan, on every instance, without refilling them. A plan is
local-only: a global bucket carries its own numbers.`,
		Args: cobra.RangeArgs(1, 2),
	}
	nums.register(putCmd)
	putCmd.RunE = func(cmd *cobra.Command, args []string) error {
		spec, fromJSON, err := jsonSpec(cmd, args, etcdsync.DecodePlan, numberFlags...)
		if err != nil {
			return err
		}
		if !fromJSON {
			if spec, err = nums.spec(cmd, "or give a JSON spec"); err != nil {
				return err
			}
			if _, err := etcdsync.EncodePlan(spec); err != nil {
				return err
			}
		}
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			if err := a.PutPlan(ctx, args[0], spec); err != nil {
				return err
			}
			_, err := fmt.Fprintf(out, "%s %s\n", args[0], planJSON(spec))
			return err
		})(cmd, args)
	}

	var force bool
	del := &cobra.Command{
		Use:     "delete <name>",
		Aliases: []string{"del"},
		Short:   "Deletes a plan that no bucket names (with --force, even if some do)",
		Long: `Deletes a plan. It refuses while any bucket names the plan, which it
finds by reading every bucket value: an admin operation, so its --timeout
defaults to 5m rather than 10s. With --force it deletes at once; the
instances then keep the plan's last config in force for the buckets still
on it, and reject new buckets that name it.`,
		Args: cobra.ExactArgs(1),
	}
	del.Flags().BoolVar(&force, "force", false, "delete even if buckets name the plan")
	del.RunE = func(cmd *cobra.Command, args []string) error {
		if !cmd.Flags().Changed("timeout") {
			conn.timeout = planDeleteTimeout
		}
		return conn.run(func(ctx context.Context, a *etcdsync.Admin, out io.Writer) error {
			if err := a.DeletePlan(ctx, args[0], force); err != nil {
				return err
			}
			_, err := fmt.Fprintf(out, "deleted plan %s\n", args[0])
			return err
		})(cmd, args)
	}

	root.AddCommand(list, get, putCmd, del)
	return root
}

// planDeleteTimeout is the default --timeout of "plans delete", which reads
// every bucket value: a million take seconds to tens of seconds on a busy
// etcd (see tests/scale_test.go), past the 10s other subcommands get.
const planDeleteTimeout = 5 * time.Minute

// planJSON is a plan's canonical value, as PutPlan writes it: Spec's own
// form would add the bucket-only scope field.
func planJSON(spec etcdsync.Spec) string {
	b, err := etcdsync.EncodePlan(spec)
	if err != nil {
		return spec.String()
	}
	return string(b)
}

func printPlans(out io.Writer, ps []etcdsync.Plan, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		for _, p := range ps {
			row := struct {
				Name        string          `json:"name"`
				Spec        json.RawMessage `json:"spec,omitempty"`
				ModRevision int64           `json:"mod_revision"`
				Error       string          `json:"error,omitempty"`
			}{Name: p.Name, ModRevision: p.ModRevision}
			if p.Err != nil {
				row.Error = p.Err.Error()
			} else {
				row.Spec = json.RawMessage(planJSON(p.Spec))
			}
			if err := enc.Encode(row); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tRATE\tPER\tBURST\tSHADOW\tREVISION")
	var notes invalidNotes
	for _, p := range ps {
		if p.Err != nil {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\t%d\n", printable(p.Name), notes.add(p.Name, p.Err), p.ModRevision)
			continue
		}
		s := p.Spec
		fmt.Fprintf(tw, "%s\t%g\t%s\t%d\t%t\t%d\n", printable(p.Name), s.Rate, s.PerString(), s.Burst, s.Shadow, p.ModRevision)
	}
	return notes.flush(tw, out)
}

// invalidNotes numbers the invalid rows of a listing, whose reasons go
// under the table: one long reason in a column would widen every row.
type invalidNotes []string

// add records why name is invalid and returns what its row shows.
func (n *invalidNotes) add(name string, err error) string {
	*n = append(*n, fmt.Sprintf("(%d) %s: %s", len(*n)+1, printable(name), printable(err.Error())))
	return fmt.Sprintf("invalid (%d)", len(*n))
}

// flush writes the table, then the reasons.
func (n invalidNotes) flush(tw *tabwriter.Writer, out io.Writer) error {
	if err := tw.Flush(); err != nil || len(n) == 0 {
		return err
	}
	_, err := fmt.Fprintf(out, "\n%s\n", strings.Join(n, "\n"))
	return err
}

// changedFlags returns the flags among names that the command line set, as
// "--a, --b", or "" if none.
func changedFlags(cmd *cobra.Command, names ...string) string {
	return strings.Join(flagsSet(cmd, true, names...), ", ")
}

// flagsSet returns, as "--name", the flags among names that the command
// line set (set true) or did not set (set false).
func flagsSet(cmd *cobra.Command, set bool, names ...string) []string {
	var out []string
	for _, n := range names {
		if cmd.Flags().Changed(n) == set {
			out = append(out, "--"+n)
		}
	}
	return out
}

// specFlags are the numbers of a spec given as flags, the alternative to
// a JSON spec in "buckets put" and "plans put".
type specFlags struct {
	rate   float64
	per    time.Duration
	burst  int64
	shadow bool
}

// numberFlags names specFlags' flags.
var numberFlags = []string{"rate", "per", "burst", "shadow"}

func (f *specFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.Float64Var(&f.rate, "rate", 0, "tokens added every --per (fractions allowed)")
	fs.DurationVar(&f.per, "per", time.Second, "refill period, at least "+etcdsync.MinPer.String())
	fs.Int64Var(&f.burst, "burst", 0, "capacity")
	fs.BoolVar(&f.shadow, "shadow", false, "count and log, never deny")
}

// spec returns the spec the flags give. It first checks what the flag
// defaults would hide from the spec's validation: --rate and --burst have
// no default, so an absent one must not read as a rate or burst of 0, and
// an explicit --per 0s must not read as the default period. alt says what
// else the command accepts.
func (f *specFlags) spec(cmd *cobra.Command, alt string) (etcdsync.Spec, error) {
	switch missing := flagsSet(cmd, false, "rate", "burst"); len(missing) {
	case 1:
		return etcdsync.Spec{}, fmt.Errorf("%w: %s is required (%s)", ErrInvalidConfig, missing[0], alt)
	case 2:
		return etcdsync.Spec{}, fmt.Errorf("%w: %s and %s are required (%s)", ErrInvalidConfig, missing[0], missing[1], alt)
	}
	if cmd.Flags().Changed("per") {
		if err := etcdsync.CheckPer(f.per); err != nil {
			return etcdsync.Spec{}, err
		}
	}
	return etcdsync.Spec{Rate: f.rate, Per: f.per, Burst: f.burst, Shadow: f.shadow}, nil
}

// jsonSpec decodes a put command's JSON spec, its second argument, if it
// has one (fromJSON), and refuses it beside any of the spec's flags.
func jsonSpec(cmd *cobra.Command, args []string, decode func([]byte) (etcdsync.Spec, error), flags ...string) (spec etcdsync.Spec, fromJSON bool, err error) {
	if len(args) < 2 {
		return spec, false, nil
	}
	if changed := changedFlags(cmd, flags...); changed != "" {
		return spec, true, fmt.Errorf("%w: give the spec as JSON or as flags, not both (%s)", ErrInvalidConfig, changed)
	}
	spec, err = decode([]byte(args[1]))
	return spec, true, err
}

func printBuckets(out io.Writer, bs []etcdsync.Bucket, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		for _, b := range bs {
			row := struct {
				ID          string          `json:"id"`
				Spec        json.RawMessage `json:"spec,omitempty"`
				ModRevision int64           `json:"mod_revision"`
				Error       string          `json:"error,omitempty"`
			}{ID: b.ID, ModRevision: b.ModRevision}
			if b.Err != nil {
				row.Error = b.Err.Error()
			} else {
				row.Spec = json.RawMessage(b.Spec.String())
			}
			if err := enc.Encode(row); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRATE\tPER\tBURST\tSCOPE\tSHADOW\tPLAN\tREVISION")
	var notes invalidNotes
	for _, b := range bs {
		if b.Err != nil {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\t\t\t%d\n", printable(b.ID), notes.add(b.ID, b.Err), b.ModRevision)
			continue
		}
		s := b.Spec
		if s.Plan != "" {
			// The numbers are the plan's: "plans list" shows them.
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\t%d\n", printable(b.ID), printable(s.Plan), b.ModRevision)
			continue
		}
		sc := s.Scope
		if sc == "" {
			sc = etcdsync.ScopeLocal
		}
		fmt.Fprintf(tw, "%s\t%g\t%s\t%d\t%s\t%t\t-\t%d\n", printable(b.ID), s.Rate, s.PerString(), s.Burst, sc, s.Shadow, b.ModRevision)
	}
	return notes.flush(tw, out)
}

// printable returns s as is if every rune in it is printable and not a
// tab, and otherwise quoted with Go escapes: a key in etcd is anyone's
// bytes, and a raw control character in a listing could forge rows or
// drive the terminal.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
