// Command caddy is Caddy with the standard modules plus edgelimit: the
// edge_limit app and handler, and the embedded etcd server. The end-to-end
// tests build it with `go build ./caddymodule/cmd/caddy`; xcaddy.sh builds
// the same set of modules with xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgelimit/edgelimit/caddymodule"
	_ "github.com/edgelimit/edgelimit/caddymodule/embedetcd"
)

func main() {
	caddycmd.Main()
}
