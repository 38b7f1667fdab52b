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

	mu   sync.Mutex
	logs strings.Builder
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
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving" {
			select {
			case serving <- rec.Addr:
			default:
			}
		}
	}
}

// Logs returns everything hourglassd and its workers wrote to stderr.
func (d *daemon) Logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// stop sends SIGTERM and waits for a clean exit; SIGKILL after 20 s.
func (d *daemon) stop() {
	if d.conn != nil {
		_ = d.conn.Close()
	}
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("hourglassd did not stop within 20s of SIGTERM:\n%s", d.Logs())
	}
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

// processGone reports whether pid no longer exists, or exists only as a
// zombie nobody will reap (which would itself be a failure for our children,
// so callers check zombies separately).
func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == syscall.ESRCH
}
