package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// proc is one process the harness started, its stdout and stderr going to
// a log file.
type proc struct {
	name    string
	argv    []string
	logPath string
	pid     int
	exited  chan struct{}
	waitErr error
	stopped bool
}

// startProc starts argv with its output in logPath. The child gets SIGKILL
// when the harness dies (parent-death signal, from a thread locked for the
// child's life, since Linux ties the signal to the thread), and hourglassd
// passes the same to its workers, so an interrupted run leaves nothing.
func (h *harness) startProc(name string, argv []string, env []string) (*proc, error) {
	p := &proc{name: name, argv: argv, logPath: filepath.Join(h.work, name+".log"), exited: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the child
		defer f.Close()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	h.procs = append(h.procs, p)
	return p, nil
}

// stop sends SIGTERM (hourglassd drains), a second SIGTERM after 10 s
// (stop at once), SIGKILL after 5 s more.
func (p *proc) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 10 * time.Second}, {syscall.SIGTERM, 5 * time.Second}, {syscall.SIGKILL, time.Minute}} {
		_ = syscall.Kill(p.pid, step.sig)
		select {
		case <-p.exited:
			return
		case <-time.After(step.wait):
		}
	}
}

func (h *harness) stopAll() {
	for _, p := range h.procs {
		p.stop()
	}
	h.procs = nil
}

// cleanEnv is the harness's environment without HOURGLASS_* and OTEL_*
// variables, so that every server runs with exactly the config shown in
// the report.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HOURGLASS_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// daemon is a running gRPC server (hourglassd or the echo server) and a
// client connection to it.
type daemon struct {
	*proc
	addr   string
	conn   *grpc.ClientConn
	client hourglassv1.GenerateServiceClient
}

// startDaemon starts hourglassd with the YAML config (written next to its
// log) on a free loopback port and returns once it logs "serving".
func (h *harness) startDaemon(figure int, label, yaml string, faults bool) (*daemon, error) {
	cfgPath := filepath.Join(h.work, label+".yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	argv := []string{filepath.Join(h.binDir, "hourglassd"), "--listen", "127.0.0.1:0", "--config", cfgPath}
	if faults {
		argv = append(argv, "--unsafe-fault-injection")
	}
	// A label started again (a fresh server every few kills) is shown
	// once in the report; each start keeps its own log.
	name := label
	if n := h.starts[label]; n > 0 {
		name = fmt.Sprintf("%s.%d", label, n)
	} else {
		shown := append([]string{"hourglassd"}, argv[1:]...)
		shown[4] = label + ".yaml"
		h.commands = append(h.commands, commandLine{figure: figure, label: label, argv: shown, yaml: yaml})
	}
	h.starts[label]++
	return h.startServer(name, argv)
}

// startServer starts argv, waits for its "serving" log line and connects.
func (h *harness) startServer(label string, argv []string) (*daemon, error) {
	p, err := h.startProc(label, argv, cleanEnv())
	if err != nil {
		return nil, err
	}
	d := &daemon{proc: p}
	rec, err := waitLog(h.ctx, p, 0, 60*time.Second, func(r logRec) bool { return r.Msg == "serving" })
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not serve: %w\n%s", label, err, tail(p.logPath, 30))
	}
	d.addr = rec.str("addr")
	d.conn, err = grpc.NewClient(d.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		p.stop()
		return nil, err
	}
	d.client = hourglassv1.NewGenerateServiceClient(d.conn)
	return d, nil
}

func (d *daemon) close() {
	if d.conn != nil {
		_ = d.conn.Close()
	}
	d.stop()
}

// info asks the server for its workers and queue.
func (d *daemon) info(ctx context.Context) (*hourglassv1.GetServerInfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
}

// waitIdle polls GetServerInfo until the queue is empty, every slot is
// ready and (with wantSpares) that many spares are ready.
func (d *daemon) waitIdle(ctx context.Context, wantSpares int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		info, err := d.info(ctx)
		if err == nil && idle(info, wantSpares) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not idle after %v (last: %v, err %v)", timeout, describeInfo(info), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func idle(info *hourglassv1.GetServerInfoResponse, wantSpares int) bool {
	if info.GetQueueDepth() != 0 {
		return false
	}
	spares := 0
	for _, w := range info.GetWorkers() {
		if w.GetSpare() {
			if w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY {
				spares++
			}
			continue
		}
		if w.GetState() != hourglassv1.WorkerState_WORKER_STATE_READY {
			return false
		}
	}
	return spares >= wantSpares
}

func describeInfo(info *hourglassv1.GetServerInfoResponse) string {
	if info == nil {
		return "no answer"
	}
	var parts []string
	for _, w := range info.GetWorkers() {
		parts = append(parts, fmt.Sprintf("%s=%s", w.GetId(), strings.TrimPrefix(w.GetState().String(), "WORKER_STATE_")))
	}
	return fmt.Sprintf("queue %d, %s", info.GetQueueDepth(), strings.Join(parts, " "))
}

// slot returns the worker info of slot id.
func slotInfo(info *hourglassv1.GetServerInfoResponse, id string) *hourglassv1.WorkerInfo {
	for _, w := range info.GetWorkers() {
		if w.GetId() == id && !w.GetSpare() {
			return w
		}
	}
	return nil
}

// logRec is one JSON log line of hourglassd (slog) or its workers.
type logRec struct {
	Time   time.Time
	Msg    string
	Fields map[string]any
	Offset int64 // byte offset of the line's end in the file
}

func (r logRec) str(key string) string {
	s, _ := r.Fields[key].(string)
	return s
}

func (r logRec) num(key string) float64 {
	f, _ := r.Fields[key].(float64)
	return f
}

// dur reads a slog duration, which JSON carries in nanoseconds.
func (r logRec) dur(key string) time.Duration { return time.Duration(r.num(key)) }

func (r logRec) has(key string) bool { _, ok := r.Fields[key]; return ok }

// readLog parses the JSON lines of path from byte offset from; a last line
// without its newline is left for the next read.
func readLog(path string, from int64) ([]logRec, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, from, err
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, from, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, from, err
	}
	var out []logRec
	off := from
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i]
		data = data[i+1:]
		off += int64(i + 1)
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		r := logRec{Fields: m, Offset: off}
		r.Msg, _ = m["msg"].(string)
		if ts, ok := m["time"].(string); ok {
			r.Time, _ = time.Parse(time.RFC3339Nano, ts)
		}
		out = append(out, r)
	}
	return out, off, nil
}

// logSize is the current length of a process's log.
func logSize(p *proc) int64 {
	st, err := os.Stat(p.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitLog polls p's log from byte offset from until a line matches.
func waitLog(ctx context.Context, p *proc, from int64, timeout time.Duration, match func(logRec) bool) (logRec, error) {
	deadline := time.Now().Add(timeout)
	for {
		recs, next, err := readLog(p.logPath, from)
		if err != nil {
			return logRec{}, err
		}
		for _, r := range recs {
			if match(r) {
				return r, nil
			}
		}
		from = next
		select {
		case <-p.exited:
			return logRec{}, fmt.Errorf("%s exited (%v)", p.name, p.waitErr)
		case <-ctx.Done():
			return logRec{}, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return logRec{}, fmt.Errorf("no matching log line within %v", timeout)
		}
	}
}

// tail is the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// Log lines of hourglassd's executor the figures read.
const (
	msgJobFinished = "job finished"         // executor: job, worker, outcome, run_time (worker's own has job_id)
	msgKilled      = "worker killed"        // executor: worker, process, after the reap
	msgSpare       = "hot spare took over"  // executor: worker, process
	msgReady       = "worker process ready" // executor: process, pid
	msgCall        = "grpc call"            // server: method, code, job, deadline
)

// executorJobFinished tells the executor's "job finished" line from the
// worker's line of the same message (which has job_id, no worker slot).
func executorJobFinished(r logRec) bool {
	return r.Msg == msgJobFinished && r.has("worker") && r.has("job")
}
