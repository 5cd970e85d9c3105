package global

import (
	"time"

	"go.uber.org/zap"
)

// ignoreReason is why a key under the members prefix is not used in full.
type ignoreReason uint8

const (
	ignoreNone ignoreReason = iota
	// ignoreNoLease: the key has no lease; it is not a member.
	ignoreNoLease
	// ignoreTooLarge: the value is over maxReportBytes; a member with no
	// demand.
	ignoreTooLarge
	// ignoreUndecodable: the value is not a report; a member with no demand.
	ignoreUndecodable
)

func (r ignoreReason) String() string {
	switch r {
	case ignoreNoLease:
		return "no lease: not counted as a member"
	case ignoreTooLarge:
		return "report too large: counted as a member with no demand"
	case ignoreUndecodable:
		return "report does not decode: counted as a member with no demand"
	}
	return "used"
}

const (
	// ignoreLogWindow and ignoreLogLines bound the log lines about ignored
	// keys: each key is logged once while it stays ignored, but a script
	// writing thousands of keys must not flood the log; the rest are
	// counted in Status, and the next line logged says how many were not.
	ignoreLogWindow = time.Minute
	ignoreLogLines  = 10
)

// ignoreLocked records that key id is ignored for reason, counts it, and
// logs it if it was not already ignored for the same reason. err, if any,
// says what was wrong with the value. It requires c.mu.
func (c *Coordinator) ignoreLocked(id string, reason ignoreReason, err error) {
	c.ignoredWrites++
	if c.ignored[id] == reason {
		return
	}
	c.ignored[id] = reason
	now := time.Now()
	if now.Sub(c.logWindow) >= ignoreLogWindow {
		c.logWindow, c.logLines = now, 0
	}
	if c.logLines >= ignoreLogLines {
		c.logSuppressed++
		return
	}
	c.logLines++
	fields := []zap.Field{zap.String("member", id), zap.String("reason", reason.String())}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	if c.logSuppressed > 0 {
		fields = append(fields, zap.Int("not_logged_before", c.logSuppressed))
		c.logSuppressed = 0
	}
	c.log.Warn("global: ignoring a member key", fields...)
}

// ignoredCountsLocked returns how many keys are ignored now: those without
// a lease, and members whose report is not used. It requires c.mu.
func (c *Coordinator) ignoredCountsLocked() (unleased, reports int) {
	for _, r := range c.ignored {
		if r == ignoreNoLease {
			unleased++
		} else {
			reports++
		}
	}
	return unleased, reports
}
