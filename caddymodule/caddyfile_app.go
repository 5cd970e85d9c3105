package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("edge_limit", parseApp)
}

// EtcdServerNamespace is the module namespace of etcd servers run inside
// Caddy (see EtcdServer).
const EtcdServerNamespace = "edge_limit.etcd_servers"

func parseApp(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("edge_limit global option is given twice")
	}
	var a App
	if err := a.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "edge_limit", Value: caddyconfig.JSON(a, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the Caddyfile's global options.
// The syntax, with every option and its default, is written once, in
// caddymodule/README.md ("Caddyfile").
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if err := noMore(d); err != nil {
		return err
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s is given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "etcd":
			a.Etcd = &EtcdConfig{Endpoints: d.RemainingArgs()}
			if err := a.Etcd.unmarshalBlock(d); err != nil {
				return err
			}
			continue
		case "etcd_server":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, EtcdServerNamespace+"."+name)
			if err != nil {
				return err
			}
			a.EtcdServerRaw = caddyconfig.JSONModuleObject(unm, "server", name, nil)
			continue
		case "global":
			g, err := unmarshalGlobal(d)
			if err != nil {
				return err
			}
			a.Global = g
			continue
		case "instance_id":
			if !d.Args(&a.InstanceID) {
				return d.ArgErr()
			}
		case "snapshot_file":
			if !d.Args(&a.SnapshotFile) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown edge_limit global option %q", opt)
		}
		if err := noMore(d); err != nil {
			return err
		}
	}
	return nil
}

func (c *EtcdConfig) unmarshalBlock(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		opt := d.Val()
		switch opt {
		case "endpoints":
			c.Endpoints = append(c.Endpoints, d.RemainingArgs()...)
			if len(c.Endpoints) == 0 {
				return d.ArgErr()
			}
			continue
		case "prefix":
			if !d.Args(&c.Prefix) {
				return d.ArgErr()
			}
		case "dial_timeout":
			var s string
			if !d.Args(&s) {
				return d.ArgErr()
			}
			dur, err := parseDurationArg(s)
			if err != nil {
				return d.Errf("dial_timeout %q: %v", s, err)
			}
			c.DialTimeout = dur
		case "username":
			if !d.Args(&c.Username) {
				return d.ArgErr()
			}
		case "password":
			if !d.Args(&c.Password) {
				return d.ArgErr()
			}
		case "tls":
			c.TLS = &EtcdTLS{}
			if err := noMore(d); err != nil {
				return err
			}
			for d.NextBlock(2) {
				var dst *string
				switch d.Val() {
				case "ca":
					dst = &c.TLS.CA
				case "cert":
					dst = &c.TLS.Cert
				case "key":
					dst = &c.TLS.Key
				case "server_name":
					dst = &c.TLS.ServerName
				default:
					return d.Errf("unknown etcd tls option %q", d.Val())
				}
				if !d.Args(dst) {
					return d.ArgErr()
				}
				if err := noMore(d); err != nil {
					return err
				}
			}
			continue
		default:
			return d.Errf("unknown etcd option %q", opt)
		}
		if err := noMore(d); err != nil {
			return err
		}
	}
	if len(c.Endpoints) == 0 {
		return d.Err("etcd: no endpoints; give them as arguments or in an endpoints line")
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*App)(nil)

func unmarshalGlobal(d *caddyfile.Dispenser) (*GlobalConfig, error) {
	g := &GlobalConfig{}
	if d.NextArg() {
		if d.Val() != "off" {
			return nil, d.Errf("global %q: want off or a block", d.Val())
		}
		g.Disabled = true
		return g, noMore(d)
	}
	for d.NextBlock(1) {
		opt := d.Val()
		var s string
		if !d.Args(&s) {
			return nil, d.ArgErr()
		}
		switch opt {
		case "sync_interval", "lease_ttl":
			dur, err := parseDurationArg(s)
			if err != nil {
				return nil, d.Errf("%s %q: %v", opt, s, err)
			}
			if opt == "sync_interval" {
				g.SyncInterval = dur
			} else {
				g.LeaseTTL = dur
			}
		case "expected_members":
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return nil, d.Errf("expected_members %q: want a positive integer", s)
			}
			g.ExpectedMembers = n
		default:
			return nil, d.Errf("unknown global option %q", opt)
		}
		if err := noMore(d); err != nil {
			return nil, err
		}
	}
	return g, nil
}
