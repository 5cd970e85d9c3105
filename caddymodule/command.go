package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgelimit/edgelimit/etcdsync"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "edge-limit",
		Usage: "buckets list|get|put|delete [flags] | policy test <module.wasm> [flags]",
		Short: "Manages edgelimit's explicit buckets in etcd and checks WASM policies",
		Long: `Manages the explicit buckets that every edge_limit instance enforces.

The buckets live in etcd under <prefix>buckets/<id> as JSON, e.g.
{"rate":100,"per":"1s","burst":200}; plain etcdctl put/del works as well.
These commands apply the same validation as the instances, so a value they
write is a value every instance accepts.

  caddy edge-limit buckets list
  caddy edge-limit buckets get acme
  caddy edge-limit buckets put acme --rate 100 --per 1s --burst 200
  caddy edge-limit buckets put acme '{"rate":10,"per":"1m","burst":20,"shadow":true}'
  caddy edge-limit buckets delete acme

"policy test" loads a WASM key policy as the policy wasm directive does and
prints its verdict for one request (no etcd needed):

  caddy edge-limit policy test apikey.wasm --config "acme=gold default=free" \
      --header "X-API-Key: acme_123"

Connection flags default from EDGELIMIT_ETCD_ENDPOINTS, EDGELIMIT_ETCD_PREFIX,
EDGELIMIT_ETCD_USERNAME and EDGELIMIT_ETCD_PASSWORD (prefer the variable to
--password, which other users can see in the process list).`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(newBucketsCommand(), newPolicyCommand())
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
	cli, err := cc.New(nil)
	if err != nil {
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
		return f(ctx, a, cmd.OutOrStdout())
	}
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
		rate           float64
		per            time.Duration
		burst          int64
		scope          string
		shadow         bool
		create, update bool
	)
	putCmd := &cobra.Command{
		Use:   "put <id> [<json spec>]",
		Short: "Creates or replaces a bucket (keeping its tokens on every instance)",
		Long: `Creates or replaces a bucket, from flags or from a JSON spec.
With --create it fails if the bucket exists; with --update, if it does not.`,
		Args: cobra.RangeArgs(1, 2),
	}
	pf := putCmd.Flags()
	pf.Float64Var(&rate, "rate", 0, "tokens added every --per (fractions allowed)")
	pf.DurationVar(&per, "per", time.Second, "refill period")
	pf.Int64Var(&burst, "burst", 0, "capacity")
	pf.StringVar(&scope, "scope", string(etcdsync.ScopeLocal), "local or global")
	pf.BoolVar(&shadow, "shadow", false, "count and log, never deny")
	pf.BoolVar(&create, "create", false, "fail if the bucket exists")
	pf.BoolVar(&update, "update", false, "fail if the bucket does not exist")
	putCmd.RunE = func(cmd *cobra.Command, args []string) error {
		if create && update {
			return fmt.Errorf("%w: --create and --update are exclusive", ErrInvalidConfig)
		}
		var spec etcdsync.Spec
		if len(args) == 2 {
			if cmd.Flags().Changed("rate") || cmd.Flags().Changed("burst") {
				return fmt.Errorf("%w: give the spec as JSON or as flags, not both", ErrInvalidConfig)
			}
			var err error
			if spec, err = etcdsync.DecodeSpec([]byte(args[1])); err != nil {
				return err
			}
		} else {
			spec = etcdsync.Spec{Rate: rate, Per: per, Burst: burst, Scope: etcdsync.Scope(scope), Shadow: shadow}
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
				err = upsert(ctx, a, args[0], spec)
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

// upsert writes spec whether or not the bucket exists, with compare-and-swap
// so that a concurrent writer is never overwritten blindly. An invalid value
// in etcd is replaced (that is how one repairs it).
func upsert(ctx context.Context, a *etcdsync.Admin, id string, spec etcdsync.Spec) error {
	for range 5 {
		_, rev, err := a.GetBucket(ctx, id)
		switch {
		case errors.Is(err, etcdsync.ErrBucketNotFound):
			rev = 0
		case err != nil && !errors.Is(err, etcdsync.ErrInvalidSpec):
			return err
		}
		err = a.CompareAndSwap(ctx, id, spec, rev)
		if !errors.Is(err, etcdsync.ErrRevisionMismatch) {
			return err
		}
	}
	return fmt.Errorf("edge-limit: bucket %q keeps changing under concurrent writers: %w", id, etcdsync.ErrRevisionMismatch)
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
	fmt.Fprintln(tw, "ID\tRATE\tPER\tBURST\tSCOPE\tSHADOW\tREVISION")
	for _, b := range bs {
		if b.Err != nil {
			fmt.Fprintf(tw, "%s\tINVALID: %v\t\t\t\t\t%d\n", b.ID, b.Err, b.ModRevision)
			continue
		}
		s := b.Spec
		p := s.Per
		if p == 0 {
			p = time.Second
		}
		sc := s.Scope
		if sc == "" {
			sc = etcdsync.ScopeLocal
		}
		fmt.Fprintf(tw, "%s\t%g\t%v\t%d\t%s\t%t\t%d\n", b.ID, s.Rate, p, s.Burst, sc, s.Shadow, b.ModRevision)
	}
	return tw.Flush()
}
