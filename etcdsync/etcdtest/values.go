package etcdtest

// MisleadingValues are bucket and plan values that encoding/json alone
// would accept, each with a meaning other than the one written: a zero or
// sub-nanosecond period (which would become the one-second default), a
// field name in the wrong case, a field given twice (the last would win)
// and a newer schema version (its new field would be dropped). etcdsync
// rejects every one; the tests of its readers and writers share them.
var MisleadingValues = []string{
	`{"rate":7,"burst":7,"per":"0s"}`,
	`{"rate":7,"burst":7,"per":"0.5ns"}`,
	`{"RATE":9,"burst":9}`,
	`{"rate":5,"rate":50,"burst":7}`,
	`{"v":2,"rate":1,"burst":1,"algorithm":"gcra"}`,
}
