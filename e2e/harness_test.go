package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// binDir holds the binaries built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hourglass-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/",
		"../cmd/hourglassd", "../cmd/hourglass-worker", "../cmd/hourglass")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// daemon is one running hourglassd process.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	conn   *grpc.ClientConn
	client hourglassv1.GenerateServiceClient
	health healthpb.HealthClient
	exited chan struct{}
	// killed is set by tests that SIGKILL hourglassd on purpose.
	killed bool

	mu   sync.Mutex
	logs strings.Builder
	pids []int // every worker process the server reported started
}

// startDaemon starts hourglassd on a free loopback port with extra flags and
// an optional YAML config, and returns once it reports serving.
func startDaemon(t *testing.T, yaml string, args ...string) *daemon {
	t.Helper()
	argv := append([]string{"--listen", "127.0.0.1:0"}, args...)
	if yaml != "" {
		path := filepath.Join(t.TempDir(), "hourglass.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		argv = append(argv, "--config", path)
	}
	d := &daemon{t: t, exited: make(chan struct{})}
	d.cmd = exec.Command(filepath.Join(binDir, "hourglassd"), argv...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start hourglassd: %v", err)
	}
	serving := make(chan string, 1)
	go d.readLogs(stderr, serving)
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(d.stop)

	select {
	case d.addr = <-serving:
	case <-d.exited:
		t.Fatalf("hourglassd exited before serving:\n%s", d.Logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("hourglassd not serving after 30s:\n%s", d.Logs())
	}
	d.conn, err = grpc.NewClient(d.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	d.client = hourglassv1.NewGenerateServiceClient(d.conn)
	d.health = healthpb.NewHealthClient(d.conn)
	return d
}

// readLogs keeps every log line and reports the address once serving.
func (d *daemon) readLogs(r io.Reader, serving chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		d.mu.Lock()
		d.logs.WriteString(line + "\n")
		d.mu.Unlock()
		var rec struct {
			Msg, Addr string
			PID       int
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		switch rec.Msg {
		case "serving":
			select {
			case serving <- rec.Addr:
			default:
			}
		case "worker process ready":
			d.mu.Lock()
			d.pids = append(d.pids, rec.PID)
			d.mu.Unlock()
		}
	}
}

// Logs returns everything hourglassd and its workers wrote to stderr.
func (d *daemon) Logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// stop sends SIGTERM and waits for a clean exit (SIGKILL after 20 s), then
// checks that no worker process the server ever started is left: not
// running, not a zombie.
func (d *daemon) stop() {
	if d.conn != nil {
		_ = d.conn.Close()
	}
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
			d.t.Errorf("hourglassd did not stop within 20s of SIGTERM:\n%s", d.Logs())
		}
	}
	if d.killed {
		return // kill -9 tests check their workers themselves
	}
	for _, pid := range d.workerPIDsEverStarted() {
		if !processGone(pid) {
			d.t.Errorf("worker pid %d outlived hourglassd (state %q)", pid, processState(pid))
		}
	}
}

// workerPIDsEverStarted lists every worker process from the server's log.
func (d *daemon) workerPIDsEverStarted() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.pids...)
}

// workerPIDs asks the server for its workers' process ids.
func (d *daemon) workerPIDs(ctx context.Context) []int {
	d.t.Helper()
	info, err := d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
	if err != nil {
		d.t.Fatalf("GetServerInfo: %v", err)
	}
	var pids []int
	for _, w := range info.GetWorkers() {
		if w.GetPid() > 0 {
			pids = append(pids, int(w.GetPid()))
		}
	}
	return pids
}

// processGone reports whether pid no longer exists at all: neither running
// nor a zombie.
func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// processState is the state letter from /proc/PID/stat ("R", "S", "Z"...),
// or "" when the process does not exist.
func processState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name is in parentheses and may hold spaces: the state
	// follows the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// processDead reports whether pid is gone or a zombie: dead, though its
// new parent may not have reaped it yet (after hourglassd was SIGKILLed,
// its workers are reparented to init or a subreaper).
func processDead(pid int) bool {
	st := processState(pid)
	return st == "" || st == "Z" || st == "X"
}

// waitFor polls cond every few milliseconds until it holds or timeout
// passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// kill9 SIGKILLs hourglassd, as a crash or an OOM kill would, and waits for
// it to exit. The harness's own no-orphan check is skipped for it: callers
// check what kill -9 promises (workers dead, maybe not yet reaped) with
// waitAllDead.
func (d *daemon) kill9(t *testing.T) {
	t.Helper()
	d.killed = true
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("hourglassd did not exit after SIGKILL")
	}
}

// waitAllDead waits until every pid is gone or a zombie.
func waitAllDead(t *testing.T, within time.Duration, what string, pids []int) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%s %v dead", what, pids), func() bool {
		for _, pid := range pids {
			if !processDead(pid) {
				return false
			}
		}
		return true
	})
}
