package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// 100 on every Linux this runs on (sysconf(_SC_CLK_TCK) without cgo).
const clockTick = 10 * time.Millisecond

// ProcCPU returns the user+system CPU time a process has used so far, all
// threads included, from /proc/PID/stat. Its resolution is 10ms: measure
// runs that use seconds of CPU.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("e2e: reading CPU time of pid %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after its closing parenthesis start at field 3 (state).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("e2e: /proc/%d/stat: no command name in %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// utime and stime are fields 14 and 15, so 11 and 12 after state.
	if len(f) < 13 {
		return 0, fmt.Errorf("e2e: /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("e2e: /proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * clockTick, nil
}
