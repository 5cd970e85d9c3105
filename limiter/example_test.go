package limiter_test

import (
	"fmt"
	"time"

	"github.com/edgelimit/edgelimit/limiter"
)

func Example() {
	l := limiter.New()
	defer l.Close()
	// An API key allowed 3 requests per second, in bursts of up to 3.
	if err := l.CreateBucket("key-123", 3, 3); err != nil {
		panic(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 4; i++ {
		d, _ := l.AllowN("key-123", t0, 1)
		fmt.Println(d.Allowed, d.Remaining, d.RetryAfter)
	}
	// A token refills every 333333333.3 ns, exactly.
	d, _ := l.AllowN("key-123", t0.Add(333333334*time.Nanosecond), 1)
	fmt.Println(d.Allowed, d.Remaining)
	// Output:
	// true 2 0s
	// true 1 0s
	// true 0 0s
	// false 0 333.333334ms
	// true 0
}

func ExampleWithDefault() {
	// Per-client limits: every unknown key gets its own bucket of
	// 10 per minute, burst 2.
	rate, _ := limiter.RateOf(10, time.Minute)
	l := limiter.New(limiter.WithDefault(limiter.Config{Rate: rate, Burst: 2}))
	defer l.Close()
	t0 := time.Unix(1_700_000_000, 0)
	for _, ip := range []string{"192.0.2.1", "192.0.2.1", "192.0.2.1", "198.51.100.7"} {
		d, _ := l.AllowN(ip, t0, 1)
		fmt.Println(ip, d.Allowed, d.RetryAfter)
	}
	// Output:
	// 192.0.2.1 true 0s
	// 192.0.2.1 true 0s
	// 192.0.2.1 false 6s
	// 198.51.100.7 true 0s
}

func ExampleLimiter_UpdateBucket() {
	now := time.Unix(1_700_000_000, 0)
	l := limiter.New(limiter.WithClock(func() time.Time { return now }))
	defer l.Close()
	l.CreateBucket("tenant", 10, 10)
	l.AllowN("tenant", now, 10) // drain it
	// Raising the limit does not refill the bucket.
	l.UpdateBucket("tenant", 100, 100)
	d, _ := l.AllowN("tenant", now, 1)
	fmt.Println(d.Allowed, d.Limit, d.RetryAfter)
	// Output: false 100 10ms
}

func ExampleLimiter_AllowN_query() {
	l := limiter.New()
	defer l.Close()
	l.CreateBucket("k", 1, 5)
	now := time.Unix(1_700_000_000, 0)
	l.AllowN("k", now, 3)
	// n = 0 reports the state without taking anything.
	d, _ := l.AllowN("k", now, 0)
	fmt.Println(d.Remaining, d.ResetAfter)
	// Output: 2 3s
}
