package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgelimit/edgelimit/policy"
	"github.com/edgelimit/edgelimit/wasm"
)

// policyTest is the request and module options of `edge-limit policy test`.
type policyTest struct {
	config, sha256         string
	method, host, path, ip string
	query                  string
	headers                []string
	timeout                time.Duration
	maxMemoryPages         uint32
}

// newPolicyCommand returns `edge-limit policy`, whose `test` subcommand
// loads a WASM policy module the way `policy wasm` does and asks it about
// one request, so that an operator can check a module and its config
// before deploying it.
func newPolicyCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "policy",
		Short: "Checks WASM key policies",
	}
	var pt policyTest
	test := &cobra.Command{
		Use:   "test <module.wasm>",
		Short: "Loads a WASM policy and prints its verdict for one request",
		Long: `Loads a WASM policy module as the policy wasm directive does (exports,
imports, ABI version, sha256 pin, the config string through the guest's
init) and prints what it declared and its verdict for one request, built
from the flags. A module that fails to load, or a guest call that fails,
is an error naming the problem.

  caddy edge-limit policy test apikey.wasm --config "acme=gold default=free" \
      --header "X-API-Key: acme_123" --path /v1/items --ip 203.0.113.7`,
		Args: cobra.ExactArgs(1),
	}
	f := test.Flags()
	f.StringVar(&pt.config, "config", "", "the policy's config string (the Caddyfile's config)")
	f.StringVar(&pt.sha256, "sha256", "", "hex SHA-256 the module must have")
	f.StringVar(&pt.method, "method", http.MethodGet, "request method")
	f.StringVar(&pt.host, "host", "example.com", "request host")
	f.StringVar(&pt.path, "path", "/", "request path")
	f.StringVar(&pt.query, "query", "", "raw query, without '?'")
	f.StringVar(&pt.ip, "ip", "192.0.2.1", "client IP address")
	f.StringArrayVar(&pt.headers, "header", nil, `request header "Name: value" (repeatable)`)
	f.DurationVar(&pt.timeout, "timeout", wasm.DefaultTimeout, "deadline of the guest call")
	f.Uint32Var(&pt.maxMemoryPages, "max-memory-pages", wasm.DefaultMaxMemoryPages, "memory cap of the instance, in 64 KiB pages")
	test.RunE = func(cmd *cobra.Command, args []string) error {
		cmd.SilenceUsage = true // the error says what is wrong; usage would bury it
		return pt.run(cmd.Context(), args[0], cmd.OutOrStdout())
	}
	root.AddCommand(test)
	return root
}

// run loads the module and prints its declarations and its verdict.
func (pt *policyTest) run(ctx context.Context, path string, out io.Writer) error {
	r, err := pt.request()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, wasmLoadTimeout)
	defer cancel()
	p, err := policy.NewWASM(ctx, policy.WASMConfig{
		Path:    path,
		OnError: policy.OnErrorDeny,
		Config: wasm.Config{
			SHA256:         pt.sha256,
			Config:         pt.config,
			Timeout:        pt.timeout,
			MaxMemoryPages: pt.maxMemoryPages,
			PoolSize:       1,
			NoCache:        true,
		},
	})
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(out, "module:  %s\nsha256:  %s\nheaders: %s\nfields:  %s\n",
		path, p.SHA256(), strings.Join(p.Headers(), ", "), p.Fields())
	v, err := p.Evaluate(r)
	if err != nil {
		return fmt.Errorf("the guest failed (%s): %w", wasm.Kind(err), err)
	}
	switch v.Action {
	case policy.Limit:
		_, err = fmt.Fprintf(out, "verdict: limit key=%q cost=%d\n", v.Key, v.Cost)
	default:
		_, err = fmt.Fprintf(out, "verdict: %s\n", v.Action)
	}
	return err
}

// request builds the HTTP request the flags describe.
func (pt *policyTest) request() (*http.Request, error) {
	ip, err := netip.ParseAddr(pt.ip)
	if err != nil {
		return nil, fmt.Errorf("%w: --ip %q: %v", ErrInvalidConfig, pt.ip, err)
	}
	u := &neturl.URL{Scheme: "http", Host: pt.host, Path: pt.path, RawQuery: pt.query}
	r, err := http.NewRequest(pt.method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: request: %v", ErrInvalidConfig, err)
	}
	r.RemoteAddr = net.JoinHostPort(ip.String(), "443")
	for _, h := range pt.headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf(`%w: --header %q: want "Name: value"`, ErrInvalidConfig, h)
		}
		r.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return r, nil
}
