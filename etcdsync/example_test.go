package etcdsync_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/edgelimit/edgelimit/etcdsync"
)

// Admin writes bucket configs to etcd; every edge instance's Syncer applies
// them from its watch, without a restart. (Not run here: it needs an etcd
// at the endpoint.)
func ExampleAdmin() {
	cc := etcdsync.ClientConfig{Endpoints: []string{"http://127.0.0.1:2379"}}
	cli, err := cc.Connect(nil)(context.Background())
	if err != nil {
		log.Fatal(err) // names the cause: refused, TLS, credentials
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin := etcdsync.NewAdmin(cli, "") // under /edgelimit/

	// A tenant with its own numbers: 100 requests a minute, bursts of 20.
	if err := admin.CreateBucket(ctx, "tenant-a", etcdsync.Spec{Rate: 100, Per: time.Minute, Burst: 20}); err != nil {
		log.Fatal(err) // ErrBucketExists, ErrInvalidSpec, ...
	}
	// A million tenants usually share a few plans: change the plan once,
	// and every bucket on it follows.
	if err := admin.PutPlan(ctx, "gold", etcdsync.Spec{Rate: 1000, Burst: 2000}); err != nil {
		log.Fatal(err)
	}
	if err := admin.CreateBucket(ctx, "tenant-b", etcdsync.Spec{Plan: "gold"}); err != nil {
		log.Fatal(err)
	}
	// Updates keep the bucket's tokens on every instance.
	if err := admin.UpdateBucket(ctx, "tenant-a", etcdsync.Spec{Rate: 200, Per: time.Minute, Burst: 20}); err != nil {
		log.Fatal(err)
	}
	if err := admin.DeleteBucket(ctx, "tenant-a"); errors.Is(err, etcdsync.ErrBucketNotFound) {
		fmt.Println("already gone")
	}
}

func ExampleDecodeSpec() {
	s, err := etcdsync.DecodeSpec([]byte(`{"rate":10,"per":"1m","burst":20}`))
	fmt.Println(s, err)
	c, _ := s.Config()
	fmt.Println(c.Rate, c.Burst)

	_, err = etcdsync.DecodeSpec([]byte(`{"rate":10,"brust":20}`))
	fmt.Println(errors.Is(err, etcdsync.ErrInvalidSpec), err)
	// Output:
	// {"rate":10,"per":"1m","burst":20,"scope":"local","shadow":false} <nil>
	// 1/6s 20
	// true etcdsync: invalid bucket spec: unknown field "brust" (version 1 knows v, rate, per, burst, scope, shadow, plan)
}

func ExampleBucketKey() {
	fmt.Println(etcdsync.BucketKey("", "tenant-a"))
	fmt.Println(etcdsync.BucketKey("/prod/limits", "tenant-a"))
	// Output:
	// /edgelimit/buckets/tenant-a
	// /prod/limits/buckets/tenant-a
}
