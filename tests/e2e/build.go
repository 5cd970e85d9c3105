package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// CaddyMainPkg is the main package that registers the edgelimit modules
// into Caddy, relative to the repository root.
const CaddyMainPkg = "./caddymodule/cmd/caddy"

// buildTimeout bounds `go build` of Caddy: a cold build of Caddy and etcd
// takes minutes on 2 shared cores, a warm one seconds.
const buildTimeout = 15 * time.Minute

var built struct {
	once sync.Once
	path string
	err  error
	tmp  string // removed by Cleanup
	took time.Duration
}

// RepoRoot returns the repository root, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// CaddyBinary returns the path of a Caddy binary with the edgelimit modules,
// built once per test process with `go build` (not xcaddy, which needs the
// network). With EDGELIMIT_CADDY_BIN set, that path is used as it is if it
// exists, and built once if not, so that repeated runs skip the build.
func CaddyBinary(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(filepath.Join(RepoRoot(), CaddyMainPkg)); err != nil {
		tb.Skipf("e2e: %s does not exist yet: %v", CaddyMainPkg, err)
	}
	built.once.Do(func() {
		path := os.Getenv("EDGELIMIT_CADDY_BIN")
		if path != "" {
			if _, err := os.Stat(path); err == nil {
				built.path = path
				return
			}
		} else {
			dir, err := os.MkdirTemp("", "edgelimit-e2e-")
			if err != nil {
				built.err = err
				return
			}
			built.tmp = dir
			path = filepath.Join(dir, "caddy")
		}
		start := time.Now()
		built.err = goBuild(path, CaddyMainPkg)
		built.took = time.Since(start)
		built.path = path
	})
	if built.err != nil {
		tb.Fatalf("e2e: building Caddy: %v", built.err)
	}
	return built.path
}

// goBuild runs `go build -o out pkg` in the repository root.
func goBuild(out, pkg string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	var outb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outb, &outb
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(buildTimeout):
		_ = cmd.Process.Kill()
		err = fmt.Errorf("timed out after %v", buildTimeout)
		<-done
	}
	if err != nil {
		return fmt.Errorf("go build -o %s %s: %w\n%s", out, pkg, err, outb.String())
	}
	return nil
}

// Cleanup removes the binary CaddyBinary built in a temp dir. Call it from
// TestMain after m.Run.
func Cleanup() {
	if built.tmp != "" {
		os.RemoveAll(built.tmp)
	}
}
