package policy

// ReservedVerdict is the verdict of a fallback for key, for the external
// tests, which cannot set the unexported mark.
func ReservedVerdict(key string, cost int64) Verdict {
	return Verdict{Key: key, Cost: cost, reserved: true}
}
