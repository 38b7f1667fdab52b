package e2e

// End-to-end tests of the Python worker (python/: the hourglass_worker SDK
// and the hourglass_torch worker, here on its numpy fallback) behind the
// real hourglassd, configured with workers.command as a user would: an
// image is generated; a deadline mid-run gives DEADLINE_EXCEEDED and the
// worker stops at its next step by itself; a worker that ignores
// cancellation is killed and respawned; kill -9 of hourglassd leaves no
// Python worker behind.
//
// They need /usr/bin/python3 with Debian's python3-grpcio, python3-protobuf
// and python3-numpy (.ci/run installs them). Without those they skip,
// unless PYTHON_TESTS_REQUIRED=1 (as in CI), when they fail.
//
// Helpers here carry a "py" prefix: the other e2e files are edited
// independently, and this file relies only on harness_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

const (
	// pyInterpreter is Debian's Python, the one that sees the packages.
	pyInterpreter = "/usr/bin/python3"
	// pyModel is the PyTorch worker's model.
	pyModel = "synthetic-diffusion-v1"
	// pyKillLine is what hourglassd logs when a cancelled worker outlived
	// the cancel grace.
	pyKillLine = "worker did not stop within the cancel grace; killing its process group"
)

// pyWorkerCommand is workers.command for the PyTorch worker on its numpy
// fallback, with test faults allowed (they still need hourglassd's
// --unsafe-fault-injection to reach a job).
func pyWorkerCommand(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(pyInterpreter, "-c", "import grpc, google.protobuf, numpy").CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("%s lacks grpc, protobuf or numpy (apt-get install python3-grpcio python3-protobuf python3-numpy): %v\n%s",
			pyInterpreter, err, out)
		if os.Getenv("PYTHON_TESTS_REQUIRED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	launcher, err := filepath.Abs("../python/launch/hourglass-torch-worker")
	if err != nil {
		t.Fatal(err)
	}
	return []string{pyInterpreter, launcher, "--backend", "numpy", "--unsafe-fault-injection"}
}

// pyYAML is a configuration serving the Python worker: count slots, spares
// hot spares, and extra YAML (timeouts, admission) appended verbatim.
func pyYAML(t *testing.T, count, spares int, extra string) string {
	t.Helper()
	cmd, err := json.Marshal(pyWorkerCommand(t))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("workers:\n  count: %d\n  spares: %d\n  command: %s\n", count, spares, cmd) + extra
}

// pyStart starts hourglassd and prints its log (the Python workers' lines
// included) when the test fails.
func pyStart(t *testing.T, yaml string, args ...string) *daemon {
	t.Helper()
	var d *daemon
	t.Cleanup(func() {
		if t.Failed() && d != nil {
			t.Logf("hourglassd log:\n%s", d.Logs())
		}
	})
	d = startDaemon(t, yaml, args...)
	return d
}

func pyInfo(t *testing.T, d *daemon) *hourglassv1.GetServerInfoResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
	if err != nil {
		t.Fatalf("GetServerInfo: %v", err)
	}
	return info
}

// pySlot polls GetServerInfo until worker id satisfies cond.
func pySlot(t *testing.T, d *daemon, id, what string, cond func(*hourglassv1.WorkerInfo) bool) *hourglassv1.WorkerInfo {
	t.Helper()
	var got *hourglassv1.WorkerInfo
	waitFor(t, 20*time.Second, "slot "+id+" "+what, func() bool {
		got = nil
		for _, w := range pyInfo(t, d).GetWorkers() {
			if w.GetId() == id {
				got = w
			}
		}
		return got != nil && cond(got)
	})
	return got
}

// pyLogs are hourglassd's log records (its own and its workers') with
// message msg.
func pyLogs(d *daemon, msg string) []map[string]any {
	var recs []map[string]any
	for _, line := range strings.Split(d.Logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			recs = append(recs, rec)
		}
	}
	return recs
}

func pyRequest(seed uint64, steps uint32, width, height uint32) *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: "a lighthouse in a storm, oil on canvas", Seed: proto.Uint64(seed),
		Width: proto.Uint32(width), Height: proto.Uint32(height), Steps: proto.Uint32(steps),
	}
}

func pyErrorInfo(err error) *errdetails.ErrorInfo {
	for _, det := range status.Convert(err).Details() {
		if ei, ok := det.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

// TestPythonWorkerGenerates: hourglassd calibrates on the Python worker and
// serves images from it; the same seed gives the same bytes; the prompt
// never reaches the log.
func TestPythonWorkerGenerates(t *testing.T) {
	d := pyStart(t, pyYAML(t, 1, 0, ""))
	if len(pyLogs(d, "calibrated run-time estimate")) == 0 {
		t.Errorf("no calibration on the Python worker in the log")
	}
	info := pyInfo(t, d)
	if len(info.GetModels()) != 1 || info.GetModels()[0].GetName() != pyModel || !info.GetModels()[0].GetDefault() {
		t.Errorf("models = %v; want the Python worker's %s", info.GetModels(), pyModel)
	}
	if len(info.GetWorkers()) != 1 || info.GetWorkers()[0].GetDevice() != "cpu" {
		t.Errorf("workers = %v; want one on device cpu", info.GetWorkers())
	}

	req := pyRequest(7, 10, 128, 96)
	req.ImageCount = proto.Uint32(2)
	req.Styles = []string{"Fooocus Cinematic"}
	generate := func() *hourglassv1.GenerateResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := d.client.Generate(ctx, req)
		if err != nil {
			t.Fatalf("Generate = %v; want OK", err)
		}
		return resp
	}
	resp := generate()
	if len(resp.GetImages()) != 2 {
		t.Fatalf("got %d images; want 2", len(resp.GetImages()))
	}
	for i, img := range resp.GetImages() {
		if img.GetMimeType() != "image/png" || img.GetSeed() != uint64(7+i) || img.GetIndex() != uint32(i) {
			t.Errorf("image %d = %s seed %d index %d; want image/png seed %d", i, img.GetMimeType(), img.GetSeed(), img.GetIndex(), 7+i)
		}
		pic, err := png.Decode(bytes.NewReader(img.GetData()))
		if err != nil {
			t.Fatalf("image %d: %v", i, err)
		}
		if b := pic.Bounds(); b.Dx() != 128 || b.Dy() != 96 {
			t.Errorf("image %d is %dx%d; want 128x96", i, b.Dx(), b.Dy())
		}
	}
	if st := resp.GetStats(); st.GetStepsDone() != 20 || st.GetStepsTotal() != 20 || st.GetModel() != pyModel {
		t.Errorf("stats = %v; want 20 of 20 steps on %s", st, pyModel)
	}
	again := generate()
	for i := range again.GetImages() {
		if !bytes.Equal(again.GetImages()[i].GetData(), resp.GetImages()[i].GetData()) {
			t.Errorf("image %d differs between two runs with the same seed", i)
		}
	}

	finished := 0
	for _, rec := range pyLogs(d, "job finished") {
		if rec["steps_reported"] != nil && rec["outcome"] == "OK" { // the Python worker's line
			finished++
		}
	}
	if finished < 2 {
		t.Errorf("the Python worker logged %d finished jobs; want at least 2", finished)
	}
	if strings.Contains(d.Logs(), "lighthouse in a storm") {
		t.Errorf("the prompt text is in the log")
	}
}

// TestPythonWorkerDeadlineStopsAtNextStep: a server deadline mid-run gives
// DEADLINE_EXCEEDED at the deadline; the Python worker stops at its next
// step by itself, goes idle, and is kept (same process, never killed).
func TestPythonWorkerDeadlineStopsAtNextStep(t *testing.T) {
	const timeout = 500 * time.Millisecond // 100 steps of 50 ms need 5 s
	d := pyStart(t, pyYAML(t, 1, 0, fmt.Sprintf("admission:\n  seconds_per_megapixel_step: 0.05\n"+
		"timeouts:\n  cancel_grace: 3s\n  default: %v\n", timeout)), "--unsafe-fault-injection")
	old := pySlot(t, d, "w0", "ready", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetPid() > 0
	})

	// No deadline on the call: the server's default applies, so what the
	// caller sees is hourglassd's own answer. A call the server never
	// answers is cancelled after a minute, so that the test fails instead.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	safety := time.AfterFunc(time.Minute, cancel)
	defer safety.Stop()
	deadline := time.Now().Add(timeout)
	_, err := d.client.Generate(metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "slow=50ms"), pyRequest(1, 100, 64, 64))
	late := time.Since(deadline)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Generate(slow=50ms, 100 steps, %v) = %v; want DEADLINE_EXCEEDED", timeout, err)
	}
	if late > time.Second {
		t.Errorf("answered %v after the deadline", late)
	}
	ei := pyErrorInfo(err)
	var doneAtDeadline int
	if _, serr := fmt.Sscan(ei.GetMetadata()["steps_done"], &doneAtDeadline); serr != nil || ei.GetReason() != "DEADLINE_EXCEEDED" ||
		doneAtDeadline == 0 || doneAtDeadline >= 100 {
		t.Fatalf("ErrorInfo = %v; want DEADLINE_EXCEEDED mid-run", ei)
	}

	// Cooperative stop: the same process is idle again, never killed.
	now := pySlot(t, d, "w0", "idle after the deadline", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetJobsDone() == 1
	})
	if now.GetPid() != old.GetPid() || now.GetRestarts() != 0 {
		t.Errorf("slot w0 after the deadline = %v; want pid %d, 0 restarts", now, old.GetPid())
	}
	if strings.Contains(d.Logs(), pyKillLine) {
		t.Errorf("a cooperative Python worker was killed")
	}
	var stopped map[string]any
	waitFor(t, 5*time.Second, "the Python worker's 'job stopped' line", func() bool {
		recs := pyLogs(d, "job stopped")
		if len(recs) > 0 {
			stopped = recs[0]
		}
		return stopped != nil
	})
	reported, _ := stopped["steps_reported"].(float64)
	t.Logf("deadline after %d of 100 steps (executor's count); the Python worker reported %v steps, then stopped with %v",
		doneAtDeadline, reported, stopped["outcome"])
	if outcome := stopped["outcome"]; outcome != "DeadlineExceeded" && outcome != "Canceled" {
		t.Errorf("Python worker's job stopped with outcome %v", outcome)
	}
	// It stopped at its next step: at most a step beyond what the executor
	// had seen at the deadline (one more may have been in flight).
	if int(reported) > doneAtDeadline+2 || int(reported) >= 100 {
		t.Errorf("the Python worker reported %v steps; the executor had %d at the deadline: it did not stop at its next step",
			reported, doneAtDeadline)
	}

	// It takes the next job.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if _, err := d.client.Generate(ctx2, pyRequest(2, 4, 64, 64)); err != nil {
		t.Fatalf("Generate after the deadline = %v; want OK", err)
	}
}

// TestPythonWorkerIgnoringCancelIsKilled: a Python worker that keeps
// stepping after its job's deadline is killed after the cancel grace,
// reaped, and respawned; the new process serves the next job.
func TestPythonWorkerIgnoringCancelIsKilled(t *testing.T) {
	const (
		timeout = 400 * time.Millisecond
		grace   = 300 * time.Millisecond
	)
	d := pyStart(t, pyYAML(t, 1, 0, fmt.Sprintf("admission:\n  seconds_per_megapixel_step: 0.05\n"+
		"timeouts:\n  cancel_grace: %v\n", grace)), "--unsafe-fault-injection")
	old := pySlot(t, d, "w0", "ready", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetPid() > 0
	})

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := d.client.Generate(metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "slow=50ms,ignore-cancel"),
		pyRequest(1, 100, 64, 64))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Generate(ignore-cancel) = %v; want DEADLINE_EXCEEDED", err)
	}
	waitFor(t, 10*time.Second, "the cancel-grace kill of the Python worker in the log", func() bool {
		for _, rec := range pyLogs(d, pyKillLine) {
			if pid, _ := rec["pid"].(float64); int32(pid) == old.GetPid() {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, fmt.Sprintf("killed Python worker pid %d reaped", old.GetPid()), func() bool {
		return processGone(int(old.GetPid()))
	})
	now := pySlot(t, d, "w0", "respawned", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetRestarts() == 1 && w.GetPid() > 0
	})
	if now.GetPid() == old.GetPid() {
		t.Fatalf("slot w0 still runs pid %d", old.GetPid())
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	resp, err := d.client.Generate(ctx2, pyRequest(2, 4, 64, 64))
	if err != nil || len(resp.GetImages()) != 1 {
		t.Fatalf("Generate on the respawned Python worker = %v, %v; want one image", resp, err)
	}
}

// TestPythonWorkersDieWithKilledDaemon: kill -9 of hourglassd while a
// Python worker runs a job leaves no Python worker behind (each has a
// parent-death signal).
func TestPythonWorkersDieWithKilledDaemon(t *testing.T) {
	d := pyStart(t, pyYAML(t, 2, 1, "admission:\n  seconds_per_megapixel_step: 0.05\n"), "--unsafe-fault-injection")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := d.client.Generate(metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "slow=100ms"), pyRequest(1, 100, 64, 64))
		done <- err
	}()
	var pids []int
	waitFor(t, 20*time.Second, "a busy Python worker and 3 worker processes", func() bool {
		busy := false
		pids = pids[:0]
		for _, w := range pyInfo(t, d).GetWorkers() {
			busy = busy || w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY
			if w.GetPid() > 0 {
				pids = append(pids, int(w.GetPid()))
			}
		}
		return busy && len(pids) == 3
	})
	for _, pid := range d.workerPIDsEverStarted() {
		found := false
		for _, p := range pids {
			found = found || p == pid
		}
		if !found {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !bytes.Contains(cmdline, []byte("hourglass-torch-worker")) {
			t.Fatalf("worker pid %d is not the Python worker: %q", pid, cmdline)
		}
	}

	d.kill9(t)
	waitAllDead(t, time.Second, "after kill -9 of hourglassd, Python worker pids", pids)
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Generate in flight during kill -9 = %v; want UNAVAILABLE", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Generate in flight did not return after hourglassd died")
	}
}
