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
	"encoding/json"
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

func decide(r *guest.Request) guest.Verdict {
	auth := r.Header("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return guest.Limit(guest.Key("ip:", r.RemoteIP))
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return guest.Fail("jwtsub: token is not three dot-separated parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return guest.Fail("jwtsub: payload is not base64url")
	}
	var claims struct {
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Sub == "" {
		return guest.Fail("jwtsub: payload has no sub claim")
	}
	return guest.Limit(guest.Key("sub:", claims.Sub))
}
