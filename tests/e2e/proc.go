package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const stopGrace = 15 * time.Second

// logTail bounds how much of each log a failing test prints: enough for the
// startup and the last errors, not megabytes of etcd chatter.
const logTail = 16 << 10

// Cmd is a process to start.
type Cmd struct {
	Path string
	Args []string
	Dir  string
	// Env is added to the test process's environment.
	Env []string
}

// Proc is a running (or exited) child process in its own process group. Its
// methods are safe for concurrent use.
type Proc struct {
	Name   string
	cmd    *exec.Cmd
	stdout string
	stderr string
	done   chan struct{}
	err    error // set before done is closed
}

// logSeq numbers successive runs of one process name in one test, so that
// a restarted process does not overwrite the logs of the run before.
var logSeq struct {
	sync.Mutex
	n map[string]int
}

// StartProc starts c with stdout and stderr in files under the test's temp
// dir, named after name. The process group is killed at test cleanup, and
// the logs are printed if the test failed.
func StartProc(tb testing.TB, name string, c Cmd) *Proc {
	tb.Helper()
	p, err := startProc(tb, name, c)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func startProc(tb testing.TB, name string, c Cmd) (*Proc, error) {
	dir := logDir(tb)
	logSeq.Lock()
	if logSeq.n == nil {
		logSeq.n = make(map[string]int)
	}
	logSeq.n[tb.Name()+"/"+name]++
	seq := logSeq.n[tb.Name()+"/"+name]
	logSeq.Unlock()
	base := filepath.Join(dir, fmt.Sprintf("%s.%d", name, seq))
	p := &Proc{Name: name, stdout: base + ".stdout", stderr: base + ".stderr", done: make(chan struct{})}
	outF, err := os.Create(p.stdout)
	if err != nil {
		return nil, fmt.Errorf("e2e: %s: %w", name, err)
	}
	errF, err := os.Create(p.stderr)
	if err != nil {
		outF.Close()
		return nil, fmt.Errorf("e2e: %s: %w", name, err)
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = outF, errF
	// Its own process group, so that Kill reaches every child it spawns;
	// Pdeathsig, so that a test binary killed by a timeout leaves no orphan.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		outF.Close()
		errF.Close()
		return nil, fmt.Errorf("e2e: starting %s (%s): %w", name, c.Path, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		outF.Close()
		errF.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill()
		if tb.Failed() {
			p.DumpLogs(tb)
		}
	})
	return p, nil
}

// logDir is where process logs go: EDGELIMIT_E2E_LOGS if set (kept after
// the run, for debugging), else the test's temp dir.
func logDir(tb testing.TB) string {
	if d := os.Getenv("EDGELIMIT_E2E_LOGS"); d != "" {
		d = filepath.Join(d, strings.ReplaceAll(tb.Name(), "/", "_"))
		if err := os.MkdirAll(d, 0o755); err == nil {
			return d
		}
	}
	return tb.TempDir()
}

// PID returns the process ID, which is also its process group ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to the whole process group and waits for the exit.
func (p *Proc) Kill() {
	if !p.Running() {
		return
	}
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM to the process group, waits for the exit, and kills the
// group if it has not exited after stopGrace.
func (p *Proc) Stop() error {
	_, err := p.StopWith(syscall.SIGTERM)
	return err
}

// StopWith sends sig to the process group and waits for the exit, like
// Stop, and returns how long the exit took.
func (p *Proc) StopWith(sig syscall.Signal) (time.Duration, error) {
	if !p.Running() {
		return 0, nil
	}
	start := time.Now()
	_ = syscall.Kill(-p.PID(), sig)
	select {
	case <-p.done:
		return time.Since(start), nil
	case <-time.After(stopGrace):
		p.Kill()
		return time.Since(start), fmt.Errorf("e2e: %s ignored %v for %v and was killed", p.Name, sig, stopGrace)
	}
}

// Logs returns what the process wrote to stdout and stderr so far.
func (p *Proc) Logs() (stdout, stderr string) {
	o, _ := os.ReadFile(p.stdout)
	e, _ := os.ReadFile(p.stderr)
	return string(o), string(e)
}

// DumpLogs prints the tail of the process's logs through tb.Log.
func (p *Proc) DumpLogs(tb testing.TB) {
	tb.Helper()
	o, e := p.Logs()
	state := "running"
	if !p.Running() {
		state = fmt.Sprintf("exited: %v", p.err)
	}
	tb.Logf("---- %s (pid %d, %s) stdout %s:\n%s", p.Name, p.PID(), state, p.stdout, tail(o))
	tb.Logf("---- %s stderr %s:\n%s", p.Name, p.stderr, tail(e))
}

func tail(s string) string {
	if len(s) <= logTail {
		return s
	}
	return "[...]\n" + s[len(s)-logTail:]
}

// errExited reports that a process ended while a caller waited for it to
// become ready.
var errExited = errors.New("e2e: process exited")
