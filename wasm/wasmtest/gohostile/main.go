// Command gohostile is a Go guest that misbehaves on demand, by path:
//
//	/panic  panics in Decide (the SDK turns it into a Fail verdict)
//	/oom    allocates until the memory cap kills it
//	/loop   spins forever (the call deadline must stop it)
//	/exit   calls os.Exit(3)
//	/echo   limits on a key made of every request field, for ABI checks
//
// Anything else is limited under the key "ok".
package main

import (
	"os"
	"strconv"

	"github.com/edgelimit/edgelimit/wasm/guest"
)

var (
	sink   [][]byte
	config string
	spins  int
)

func main() {}

func init() {
	guest.Register(guest.Policy{
		Headers: []string{"X-One", "x-two"},
		Init: func(c string) error {
			config = c
			return nil
		},
		Decide: decide,
	})
}

func decide(r *guest.Request) guest.Verdict {
	switch r.Path {
	case "/panic":
		panic("gohostile: asked to panic")
	case "/oom":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "/loop":
		for {
			spins++
		}
	case "/exit":
		os.Exit(3)
	case "/echo":
		vals := ""
		for _, h := range r.Headers {
			vals += "|" + h.Name + "=" + h.Value
		}
		return guest.Limit(guest.Key(r.Method, " ", r.Host, " ", r.Path, "?", r.Query, " ", r.RemoteIP,
			" cfg=", config, " n=", strconv.Itoa(len(r.Headers)), vals))
	}
	return guest.Limit("ok")
}
