package etcdsync

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync/etcdtest"
	"github.com/edgelimit/edgelimit/limiter"
)

func TestAdminErrors(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	a := NewAdmin(cli, testPrefix)
	ctx := ctxT(t)

	if err := a.CreateBucket(ctx, "t1", spec(10, 20)); err != nil {
		t.Fatal(err)
	}
	// The stored value is the canonical form.
	resp, err := cli.Get(ctx, bkey("t1"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"rate":10,"per":"1s","burst":20,"scope":"local","shadow":false}` {
		t.Fatalf("stored value: %v %v", resp, err)
	}
	tests := []struct {
		name string
		err  error
		want error
		msg  string
	}{
		{"create existing", a.CreateBucket(ctx, "t1", spec(1, 1)), ErrBucketExists, `"t1"`},
		{"update missing", a.UpdateBucket(ctx, "nope", spec(1, 1)), ErrBucketNotFound, `"nope"`},
		{"delete missing", a.DeleteBucket(ctx, "nope"), ErrBucketNotFound, `"nope"`},
		{"create invalid spec", a.CreateBucket(ctx, "t2", spec(1, 0)), limiter.ErrInvalidBurst, `burst 0`},
		{"create invalid scope", a.CreateBucket(ctx, "t2", Spec{Rate: 1, Burst: 1, Scope: "world"}), ErrInvalidSpec, `"world"`},
		{"update invalid spec", a.UpdateBucket(ctx, "t1", spec(-1, 1)), limiter.ErrInvalidRate, `rate -1`},
		{"empty id", a.CreateBucket(ctx, "", spec(1, 1)), limiter.ErrInvalidBucketID, "empty"},
		{"oversize id", a.CreateBucket(ctx, strings.Repeat("i", 300), spec(1, 1)), limiter.ErrInvalidBucketID, "300 bytes"},
		{"control char id", a.DeleteBucket(ctx, "a\nb"), limiter.ErrInvalidBucketID, "control character"},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) || !strings.Contains(tt.err.Error(), tt.msg) {
			t.Errorf("%s: %v, want %v mentioning %s", tt.name, tt.err, tt.want, tt.msg)
		}
	}
	if _, _, err := a.GetBucket(ctx, "nope"); !errors.Is(err, ErrBucketNotFound) {
		t.Errorf("get missing: %v", err)
	}

	// Update, get, compare-and-swap.
	if err := a.UpdateBucket(ctx, "t1", spec(30, 40)); err != nil {
		t.Fatal(err)
	}
	got, rev, err := a.GetBucket(ctx, "t1")
	if err != nil || got != spec(30, 40) || rev == 0 {
		t.Fatalf("GetBucket = %+v, %d, %v", got, rev, err)
	}
	if err := a.CompareAndSwap(ctx, "t1", spec(50, 60), rev-1); !errors.Is(err, ErrRevisionMismatch) || !strings.Contains(err.Error(), "not") {
		t.Fatalf("CAS with a stale revision: %v", err)
	}
	if err := a.CompareAndSwap(ctx, "t1", spec(50, 60), rev); err != nil {
		t.Fatalf("CAS at the current revision: %v", err)
	}
	if err := a.CompareAndSwap(ctx, "t1", spec(70, 80), rev); !errors.Is(err, ErrRevisionMismatch) {
		t.Fatalf("second CAS at the same revision: %v", err)
	}
	if err := a.CompareAndSwap(ctx, "fresh", spec(1, 1), 0); err != nil {
		t.Fatalf("CAS at 0 on a missing bucket creates it: %v", err)
	}
	if err := a.CompareAndSwap(ctx, "fresh", spec(1, 1), 0); !errors.Is(err, ErrRevisionMismatch) {
		t.Fatalf("CAS at 0 on an existing bucket: %v", err)
	}

	// An invalid value put behind the admin's back is reported, with its revision.
	mustPut(t, cli, bkey("broken"), `{"rate":1}`)
	if _, rev, err := a.GetBucket(ctx, "broken"); !errors.Is(err, ErrInvalidSpec) || rev == 0 {
		t.Fatalf("get broken: rev %d, %v", rev, err)
	}
	list, err := a.ListBuckets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range list {
		ids = append(ids, b.ID)
		if (b.ID == "broken") != (b.Err != nil) {
			t.Errorf("bucket %s: err %v", b.ID, b.Err)
		}
	}
	if strings.Join(ids, ",") != "broken,fresh,t1" {
		t.Fatalf("ListBuckets IDs = %v", ids)
	}
	if err := a.DeleteBucket(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteBucket(ctx, "t1"); !errors.Is(err, ErrBucketNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestAdminCreateRace(t *testing.T) {
	e := etcdtest.Start(t)
	a := NewAdmin(e.Client(t), testPrefix)
	ctx := ctxT(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = a.CreateBucket(ctx, "contended", spec(float64(i+1), 1))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrBucketExists):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d creators won, want exactly 1", won)
	}
}

func TestAdminListPaginates(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	putBuckets(t, cli, 2500, 1000)
	a := NewAdmin(cli, testPrefix)
	a.PageSize = 100
	start := time.Now()
	list, err := a.ListBuckets(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2500 || list[0].ID != "b0000000" || list[2499].ID != "b0002499" {
		t.Fatalf("listed %d buckets, first %q last %q", len(list), list[0].ID, list[len(list)-1].ID)
	}
	t.Logf("listed 2500 in %v", time.Since(start))
}

func TestAdminPlans(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	a := NewAdmin(cli, testPrefix)
	ctx := ctxT(t)

	if err := a.CreateBucket(ctx, "acme", Spec{Plan: "gold"}); !errors.Is(err, ErrPlanNotFound) || !strings.Contains(err.Error(), `"gold"`) {
		t.Fatalf("bucket on a missing plan: %v", err)
	}
	if err := a.PutPlan(ctx, "gold", spec(100, 200)); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, pkey("gold"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"rate":100,"per":"1s","burst":200,"shadow":false}` {
		t.Fatalf("stored plan: %v %v", resp, err)
	}
	if err := a.CreateBucket(ctx, "acme", Spec{Plan: "gold"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateBucket(ctx, "acme", Spec{Plan: "gold"}); !errors.Is(err, ErrBucketExists) {
		t.Fatalf("create existing on a plan: %v", err)
	}
	if got, _, err := a.GetBucket(ctx, "acme"); err != nil || got != (Spec{Plan: "gold"}) {
		t.Fatalf("GetBucket = %+v, %v", got, err)
	}
	if err := a.UpdateBucket(ctx, "acme", Spec{Plan: "silver"}); !errors.Is(err, ErrPlanNotFound) {
		t.Fatalf("update to a missing plan: %v", err)
	}
	if err := a.UpdateBucket(ctx, "nobody", Spec{Plan: "gold"}); !errors.Is(err, ErrBucketNotFound) {
		t.Fatalf("update of a missing bucket on a plan: %v", err)
	}
	tests := []struct {
		name string
		err  error
		want error
		msg  string
	}{
		{"global plan", a.PutPlan(ctx, "g", Spec{Rate: 1, Burst: 1, Scope: ScopeGlobal}), ErrInvalidSpec, "local-only"},
		{"bad plan name", a.PutPlan(ctx, "a\x00", spec(1, 1)), limiter.ErrInvalidPlanName, "control character"},
		{"invalid plan", a.PutPlan(ctx, "z", spec(1, 0)), limiter.ErrInvalidBurst, "burst 0"},
		{"mixed bucket", a.CreateBucket(ctx, "mix", Spec{Plan: "gold", Rate: 1}), ErrInvalidSpec, "config of its own"},
		{"get missing plan", errOf3(a.GetPlan(ctx, "nope")), ErrPlanNotFound, `"nope"`},
		{"delete missing plan", a.DeletePlan(ctx, "nope", false), ErrPlanNotFound, `"nope"`},
		{"force-delete missing plan", a.DeletePlan(ctx, "nope", true), ErrPlanNotFound, `"nope"`},
		{"delete plan in use", a.DeletePlan(ctx, "gold", false), ErrPlanInUse, `"gold" is named by 1 buckets (["acme"]`},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) || !strings.Contains(tt.err.Error(), tt.msg) {
			t.Errorf("%s: %v, want %v mentioning %s", tt.name, tt.err, tt.want, tt.msg)
		}
	}
	if got, rev, err := a.GetPlan(ctx, "gold"); err != nil || got != spec(100, 200) || rev == 0 {
		t.Fatalf("GetPlan = %+v, %d, %v", got, rev, err)
	}
	mustPut(t, cli, pkey("broken"), `{"rate":1,"burst":1,"scope":"local"}`)
	if err := a.PutPlan(ctx, "silver", spec(1, 1)); err != nil {
		t.Fatal(err)
	}
	plans, err := a.ListPlans(ctx)
	if err != nil || len(plans) != 3 || plans[0].Name != "broken" || plans[0].Err == nil ||
		plans[1].Name != "gold" || plans[1].Spec != spec(100, 200) || plans[2].Name != "silver" || plans[2].Err != nil {
		t.Fatalf("ListPlans = %+v, %v", plans, err)
	}
	// Once no bucket names it, the plan can go.
	if err := a.UpdateBucket(ctx, "acme", Spec{Plan: "silver"}); err != nil {
		t.Fatal(err)
	}
	if err := a.DeletePlan(ctx, "gold", false); err != nil {
		t.Fatalf("delete of an unused plan: %v", err)
	}
	// Forced, a plan in use goes.
	if err := a.DeletePlan(ctx, "silver", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, _, err := a.GetPlan(ctx, "silver"); !errors.Is(err, ErrPlanNotFound) {
		t.Fatalf("after the forced delete: %v", err)
	}
}

func errOf3[T, U any](_ T, _ U, err error) error { return err }

// Admin reads and writes values with the syncer's own validation, so it
// reports the values that look wrong with the same errors.
func TestAdminRejectsValuesThatLookWrong(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	a := NewAdmin(cli, testPrefix)
	ctx := ctxT(t)

	for _, val := range etcdtest.MisleadingValues {
		_, bucketErr := DecodeSpec([]byte(val))
		_, planErr := DecodePlan([]byte(val))
		if bucketErr == nil || planErr == nil {
			t.Fatalf("%s decodes: %v, %v", val, bucketErr, planErr)
		}
		mustPut(t, cli, bkey("b"), val)
		mustPut(t, cli, PlanKey(testPrefix, "p"), val)
		if _, rev, err := a.GetBucket(ctx, "b"); rev == 0 || !errors.Is(err, ErrInvalidSpec) || !strings.HasSuffix(err.Error(), bucketErr.Error()) {
			t.Errorf("GetBucket of %s: %d, %v; want the revision and %q", val, rev, err, bucketErr)
		}
		if bs, err := a.ListBuckets(ctx); err != nil || len(bs) != 1 || bs[0].Err == nil || bs[0].Err.Error() != bucketErr.Error() {
			t.Errorf("ListBuckets with %s: %+v, %v; want the bucket with %q", val, bs, err, bucketErr)
		}
		if _, _, err := a.GetPlan(ctx, "p"); !errors.Is(err, ErrInvalidSpec) || !strings.HasSuffix(err.Error(), planErr.Error()) {
			t.Errorf("GetPlan of %s: %v; want %q", val, err, planErr)
		}
		if ps, err := a.ListPlans(ctx); err != nil || len(ps) != 1 || ps[0].Err == nil || ps[0].Err.Error() != planErr.Error() {
			t.Errorf("ListPlans with %s: %+v, %v; want the plan with %q", val, ps, err, planErr)
		}
	}

	// A period below MinPer is refused on writes too; zero is the default.
	for _, per := range []time.Duration{time.Nanosecond, 999 * time.Microsecond, -time.Second} {
		if err := a.UpdateBucket(ctx, "b", Spec{Rate: 1, Per: per, Burst: 1}); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `field "per"`) {
			t.Errorf("UpdateBucket with per %v: %v, want ErrInvalidSpec naming per", per, err)
		}
		if err := a.PutPlan(ctx, "p", Spec{Rate: 1, Per: per, Burst: 1}); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `field "per"`) {
			t.Errorf("PutPlan with per %v: %v, want ErrInvalidSpec naming per", per, err)
		}
	}
	if err := a.UpdateBucket(ctx, "b", Spec{Rate: 1, Per: MinPer, Burst: 1}); err != nil {
		t.Errorf("UpdateBucket with per %v: %v", MinPer, err)
	}
}

// TestAdminPutBucket: PutBucket creates, replaces and repairs a value the
// syncers reject, and refuses a plan etcd does not hold.
func TestAdminPutBucket(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	a := NewAdmin(cli, testPrefix)
	ctx := ctxT(t)
	for _, want := range []Spec{spec(1, 2), spec(3, 4)} { // create, then replace
		if err := a.PutBucket(ctx, "p", want); err != nil {
			t.Fatal(err)
		}
		if got, _, err := a.GetBucket(ctx, "p"); err != nil || got != want {
			t.Fatalf("after PutBucket(%v): %v, %v", want, got, err)
		}
	}
	mustPut(t, cli, bkey("p"), `{"rate":1,"brust":2}`)
	if _, _, err := a.GetBucket(ctx, "p"); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("the broken value reads as %v, want ErrInvalidSpec", err)
	}
	if err := a.PutBucket(ctx, "p", spec(5, 6)); err != nil {
		t.Fatalf("repairing an invalid value: %v", err)
	}
	if got, _, err := a.GetBucket(ctx, "p"); err != nil || got != spec(5, 6) {
		t.Fatalf("after the repair: %v, %v", got, err)
	}
	if err := a.PutBucket(ctx, "p", Spec{Plan: "nosuch"}); !errors.Is(err, ErrPlanNotFound) {
		t.Fatalf("a missing plan: %v, want ErrPlanNotFound", err)
	}
	if got, _, _ := a.GetBucket(ctx, "p"); got != spec(5, 6) {
		t.Fatalf("a refused put changed the bucket to %v", got)
	}
}
