// Command jwtsub is an edgelimit policy: one bucket per JWT subject.
//
// It reads the `sub` claim of a bearer token without verifying the
// signature: verification is the auth layer's job, and a forged token only
// moves its sender to another bucket. Requests without a token are keyed by
// client IP; a malformed token is reported with guest.Fail, so the
// handler's on_error action decides.
package main

import (
	"encoding/base64"
	"strings"

	"github.com/edgelimit/edgelimit/wasm/guest"
)

func main() {}

func init() {
	guest.Register(guest.Policy{
		Headers: []string{"Authorization"},
		Fields:  guest.RemoteIP, // for requests without a token
		Decide:  decide,
	})
}

// payload is the decoded claims of the token being looked at, reused from
// call to call: a policy that allocates nothing never runs the guest's
// garbage collector, whose cycles take milliseconds in wasm.
var payload []byte

func decide(r *guest.Request) guest.Verdict {
	auth := r.Header("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return guest.Limit(guest.Key("ip:", r.RemoteIP))
	}
	_, rest, ok1 := strings.Cut(token, ".")
	claims, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig, ".") {
		return guest.Fail("jwtsub: token is not three dot-separated parts")
	}
	var err error
	if payload, err = base64.RawURLEncoding.AppendDecode(payload[:0], []byte(claims)); err != nil {
		return guest.Fail("jwtsub: payload is not base64url")
	}
	sub, ok := guest.JSONString(payload, "sub")
	if !ok || sub == "" {
		return guest.Fail("jwtsub: payload has no sub claim")
	}
	return guest.Limit(guest.Key("sub:", sub))
}
