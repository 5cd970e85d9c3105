package etcdsync_test

import (
	"errors"
	"fmt"

	"github.com/edgelimit/edgelimit/etcdsync"
)

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
