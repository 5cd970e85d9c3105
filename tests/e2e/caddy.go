package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/edgelimit/tests/testutil"
)

// caddyReadyTimeout bounds a Caddy start: provisioning includes connecting
// to etcd and, in embedded mode, starting an etcd server.
const caddyReadyTimeout = 60 * time.Second

// Caddy is one Caddy process with its own admin endpoint, HTTP port and
// working dir (its HOME and XDG dirs, so that nothing leaks between
// instances or into the user's storage).
type Caddy struct {
	Name      string
	Bin       string
	Dir       string
	AdminPort int
	HTTPPort  int
	// ConfigFile is the Caddyfile the process runs, written by Start.
	ConfigFile string
	// Env is added to the environment of the process and of `caddy
	// reload`, e.g. for the {$VAR} substitutions of a Caddyfile.
	Env []string
	// CPUs, if set before Start, pins the process with taskset -c (e.g.
	// "0"), which also makes Go's GOMAXPROCS follow the pinned set.
	CPUs string
	proc *Proc
	tb   testing.TB
}

// NewCaddy prepares (but does not start) a Caddy on free ports.
func NewCaddy(tb testing.TB, name string) *Caddy {
	tb.Helper()
	dir := tb.TempDir()
	return &Caddy{
		Name:       name,
		Bin:        CaddyBinary(tb),
		Dir:        dir,
		AdminPort:  FreePort(tb),
		HTTPPort:   FreePort(tb),
		ConfigFile: filepath.Join(dir, "Caddyfile"),
		tb:         tb,
	}
}

// AdminAddr returns the admin endpoint's host:port.
func (c *Caddy) AdminAddr() string { return HostPort(c.AdminPort) }

// URL returns the URL of path on the HTTP port.
func (c *Caddy) URL(path string) string { return "http://" + HostPort(c.HTTPPort) + path }

// Caddyfile wraps a site body in a Caddyfile for this instance: the global
// options (admin endpoint, listeners on loopback only, no automatic HTTPS,
// no autosave, then globals) and one plain-HTTP site on the HTTP port.
func (c *Caddy) Caddyfile(globals, site string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tdefault_bind %s\n\tauto_https off\n\tpersist_config off\n", c.AdminAddr(), Loopback)
	if g := indent(globals); g != "" {
		b.WriteString(g + "\n")
	}
	fmt.Fprintf(&b, "}\n\nhttp://%s {\n%s\n}\n", HostPort(c.HTTPPort), indent(site))
	return b.String()
}

func indent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "\t" + l
		}
	}
	return strings.Join(lines, "\n")
}

// Proc returns the current process (nil before Start).
func (c *Caddy) Proc() *Proc { return c.proc }

// Start writes caddyfile to ConfigFile and runs `caddy run` on it, then waits
// until the admin endpoint and the HTTP port answer.
func (c *Caddy) Start(caddyfile string) {
	c.tb.Helper()
	if err := os.WriteFile(c.ConfigFile, []byte(caddyfile), 0o644); err != nil {
		c.tb.Fatal(err)
	}
	c.Restart()
}

// Restart starts Caddy again on ConfigFile, after stopping it if it runs.
func (c *Caddy) Restart() {
	c.tb.Helper()
	if c.proc != nil {
		c.Stop()
	}
	cmd := Cmd{
		Path: c.Bin,
		Args: []string{"run", "--config", c.ConfigFile, "--adapter", "caddyfile"},
		Dir:  c.Dir,
		Env:  c.env(),
	}
	if c.CPUs != "" {
		// taskset execs Caddy in place: the PID stays Caddy's.
		cmd.Args = append([]string{"-c", c.CPUs, c.Bin}, cmd.Args...)
		cmd.Path = "taskset"
	}
	p, err := startProc(c.tb, c.Name, cmd)
	if err != nil {
		c.tb.Fatal(err)
	}
	c.proc = p
	if err := c.waitReady(caddyReadyTimeout); err != nil {
		c.tb.Fatal(err) // the cleanup prints the logs
	}
}

func (c *Caddy) env() []string {
	return append([]string{
		"HOME=" + c.Dir,
		"XDG_DATA_HOME=" + filepath.Join(c.Dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(c.Dir, "config"),
	}, c.Env...)
}

// waitReady polls the admin endpoint and the HTTP port.
func (c *Caddy) waitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	_, err := testutil.Poll(timeout, pollEvery, func() error {
		if !c.proc.Running() {
			return testutil.Stop(fmt.Errorf("%w before it was ready: %s: %v", errExited, c.Name, c.proc.err))
		}
		resp, err := client.Get("http://" + c.AdminAddr() + "/config/")
		if err != nil {
			return err
		}
		drain(resp)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("admin /config/: %s", resp.Status)
		}
		resp, err = client.Get(c.URL("/"))
		if err != nil {
			return err
		}
		drain(resp)
		return nil
	})
	if errors.Is(err, errExited) {
		return err
	}
	if err != nil {
		return fmt.Errorf("e2e: %s not ready after %v: %w", c.Name, timeout, err)
	}
	return nil
}

// Stop stops Caddy with SIGTERM (a graceful exit) and waits.
func (c *Caddy) Stop() {
	c.tb.Helper()
	if err := c.proc.Stop(); err != nil {
		c.tb.Log(err)
	}
}

// Kill stops Caddy with SIGKILL: no cleanup, its etcd lease stays until TTL.
func (c *Caddy) Kill() { c.proc.Kill() }

// Reload runs `caddy reload` with caddyfile, which is written to a new file
// first; on success it becomes ConfigFile. It returns the command's output
// in the error when the reload fails.
func (c *Caddy) Reload(caddyfile string) error {
	next := c.ConfigFile + ".next"
	if err := os.WriteFile(next, []byte(caddyfile), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), caddyReadyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bin, "reload", "--config", next, "--adapter", "caddyfile", "--address", c.AdminAddr(), "--force")
	cmd.Dir = c.Dir
	cmd.Env = append(cmd.Environ(), c.env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("e2e: caddy reload: %w: %s", err, out)
	}
	return os.Rename(next, c.ConfigFile)
}

// Validate runs `caddy validate` on caddyfile, written to a file of its own,
// with this instance's environment, and returns the command's output.
func (c *Caddy) Validate(caddyfile string) (string, error) {
	file := c.ConfigFile + ".validate"
	if err := os.WriteFile(file, []byte(caddyfile), 0o644); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), caddyReadyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bin, "validate", "--config", file, "--adapter", "caddyfile")
	cmd.Dir = c.Dir
	cmd.Env = append(cmd.Environ(), c.env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("e2e: caddy validate: %w: %s", err, out)
	}
	return string(out), nil
}

// Load posts caddyfile to the admin endpoint's /load, adapted by the running
// Caddy. It returns the response body in the error on failure.
func (c *Caddy) Load(caddyfile string) error {
	req, err := http.NewRequest(http.MethodPost, "http://"+c.AdminAddr()+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := (&http.Client{Timeout: caddyReadyTimeout}).Do(req)
	if err != nil {
		return fmt.Errorf("e2e: POST /load: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("e2e: POST /load: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// AdminGet returns the body of GET path on the admin endpoint.
func (c *Caddy) AdminGet(path string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.AdminAddr() + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("e2e: admin GET %s: %s", path, resp.Status)
	}
	return string(body), nil
}

// drain reads and closes a response body, so that the connection is reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
