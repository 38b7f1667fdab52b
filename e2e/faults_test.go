package e2e

// End-to-end tests of the executor's promises when workers misbehave, using
// the built-in worker's test faults (hourglassd --unsafe-fault-injection,
// gRPC metadata key hourglass-fault): hang, ignore-cancel, crash, oom, slow;
// the crash loop and its backoff; the heartbeat; kill -9 of hourglassd; and
// deadline-aware admission.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

const (
	// faultFlag lets the hourglass-fault metadata key reach the workers.
	faultFlag = "--unsafe-fault-injection"
	// faultKey is the metadata key that selects a fault for one call.
	faultKey = "hourglass-fault"
	// errorDomain is the domain of every ErrorInfo hourglass sends.
	errorDomain = "hourglass.dev"
	// killLine is what hourglassd logs when a cancelled worker outlived
	// the cancel grace.
	killLine = "worker did not stop within the cancel grace; killing its process group"
)

// startLoggedDaemon is startDaemon that also prints hourglassd's log (its
// shutdown included) when the test fails.
func startLoggedDaemon(t *testing.T, yaml string, args ...string) *daemon {
	t.Helper()
	var d *daemon
	t.Cleanup(func() { // runs after d.stop
		if t.Failed() && d != nil {
			t.Logf("hourglassd log:\n%s", d.Logs())
		}
	})
	d = startDaemon(t, yaml, args...)
	return d
}

// withFault selects a test fault for the calls made with the returned
// context; "" selects none.
func withFault(ctx context.Context, fault string) context.Context {
	if fault == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, faultKey, fault)
}

// fastRequest is small enough that admission with any rate below 0.5 s per
// megapixel-step admits it under a 300 ms deadline (128×96×30 is 0.37
// megapixel-steps), yet it has enough steps for a fault to strike mid-run.
func fastRequest(seed uint64, steps uint32) *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: "a lighthouse in a storm", Seed: proto.Uint64(seed),
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(steps),
	}
}

// faultYAML is a configuration for the fault tests: count slots, spares hot
// spares and a configured admission rate, which skips the start-up
// calibration (whose jobs would show up in the workers' logs and counters).
// extra (timeouts, say) is appended verbatim.
func faultYAML(count, spares int, extra string) string {
	return fmt.Sprintf("workers:\n  count: %d\n  spares: %d\n"+
		"admission:\n  seconds_per_megapixel_step: 0.05\n", count, spares) + extra
}

// deadlineBy says who sets a call's deadline.
type deadlineBy int

const (
	// byCaller: the call carries the deadline (grpc-timeout). The caller's
	// gRPC library ends the call at that moment by itself, so the code
	// the caller sees is DEADLINE_EXCEEDED whatever the server does.
	byCaller deadlineBy = iota
	// byServer: the call carries none and the server's timeouts.default
	// applies, so what the caller sees, and when, is hourglassd's own
	// answer, details included.
	byServer
)

func (b deadlineBy) String() string {
	if b == byServer {
		return "server deadline"
	}
	return "caller deadline"
}

// generateBy calls Generate with fault and a deadline of timeout from now,
// set by the caller or left to the server (whose timeouts.default must then
// equal timeout). It returns the response, the error and how long after
// the deadline the call returned. A byServer call that the server never
// answers is cancelled after a minute, so that the test fails instead of
// hanging.
func generateBy(d *daemon, by deadlineBy, timeout time.Duration, fault string, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, time.Duration, error) {
	var (
		ctx      context.Context
		cancel   context.CancelFunc
		deadline time.Time
	)
	if by == byCaller {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
		deadline, _ = ctx.Deadline()
	} else {
		ctx, cancel = context.WithCancel(context.Background())
		// The server starts its clock when the call arrives, a little
		// after this: measuring from here can only overstate lateness.
		deadline = time.Now().Add(timeout)
		safety := time.AfterFunc(time.Minute, cancel)
		defer safety.Stop()
	}
	defer cancel()
	resp, err := d.client.Generate(withFault(ctx, fault), req)
	return resp, time.Since(deadline), err
}

// errorInfo is the google.rpc.ErrorInfo in err's status details, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, det := range status.Convert(err).Details() {
		if ei, ok := det.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

// retryInfo is the google.rpc.RetryInfo in err's status details, or nil.
func retryInfo(err error) *errdetails.RetryInfo {
	for _, det := range status.Convert(err).Details() {
		if ri, ok := det.(*errdetails.RetryInfo); ok {
			return ri
		}
	}
	return nil
}

// checkStatus fails the test unless err has code and, when reason is not
// empty, an ErrorInfo of hourglass's domain with that reason.
func checkStatus(t *testing.T, call string, err error, code codes.Code, reason string) *errdetails.ErrorInfo {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s = %v; want %v", call, err, code)
	}
	if reason == "" {
		return errorInfo(err)
	}
	ei := errorInfo(err)
	if ei.GetReason() != reason || ei.GetDomain() != errorDomain {
		t.Fatalf("%s: ErrorInfo = %v; want reason %s, domain %s (details %v)",
			call, ei, reason, errorDomain, status.Convert(err).Details())
	}
	return ei
}

// info is GetServerInfo, failing the test on error.
func (d *daemon) info() *hourglassv1.GetServerInfoResponse {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
	if err != nil {
		d.t.Fatalf("GetServerInfo: %v", err)
	}
	return info
}

// slotOf is the worker with id in info, or nil.
func slotOf(info *hourglassv1.GetServerInfoResponse, id string) *hourglassv1.WorkerInfo {
	for _, w := range info.GetWorkers() {
		if w.GetId() == id {
			return w
		}
	}
	return nil
}

// readySpare is the pid of a ready hot spare, or 0.
func readySpare(info *hourglassv1.GetServerInfoResponse) int {
	for _, w := range info.GetWorkers() {
		if w.GetSpare() && w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetPid() > 0 {
			return int(w.GetPid())
		}
	}
	return 0
}

// waitSlot polls GetServerInfo until slot id satisfies cond and returns it.
func (d *daemon) waitSlot(timeout time.Duration, id, what string, cond func(*hourglassv1.WorkerInfo) bool) *hourglassv1.WorkerInfo {
	d.t.Helper()
	var got *hourglassv1.WorkerInfo
	waitFor(d.t, timeout, "slot "+id+" "+what, func() bool {
		got = slotOf(d.info(), id)
		return got != nil && cond(got)
	})
	return got
}

// waitReady waits until slot id is ready after restarts replacements.
func (d *daemon) waitReady(id string, restarts uint32) *hourglassv1.WorkerInfo {
	d.t.Helper()
	return d.waitSlot(10*time.Second, id, fmt.Sprintf("ready with %d restarts", restarts), func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetRestarts() == restarts && w.GetPid() > 0
	})
}

// waitSpare waits until a hot spare is ready and returns its pid.
func (d *daemon) waitSpare() int {
	d.t.Helper()
	var pid int
	waitFor(d.t, 10*time.Second, "a ready hot spare", func() bool {
		pid = readySpare(d.info())
		return pid != 0
	})
	return pid
}

// logged reports whether hourglassd's log (its own and its workers') has a
// JSON line with message msg (any message when msg is "") and every
// attribute in attrs, compared as printed ("pid": 1234 matches the number
// 1234).
func (d *daemon) logged(msg string, attrs map[string]any) bool {
	for _, line := range strings.Split(d.Logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || (msg != "" && rec["msg"] != msg) {
			continue
		}
		match := true
		for k, v := range attrs {
			match = match && fmt.Sprint(rec[k]) == fmt.Sprint(v)
		}
		if match {
			return true
		}
	}
	return false
}

// mustGenerate runs a fault-free job that must succeed.
func mustGenerate(t *testing.T, d *daemon, req *hourglassv1.GenerateRequest) *hourglassv1.GenerateResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := d.client.Generate(ctx, req)
	if err != nil {
		t.Fatalf("Generate(no fault) = %v; want OK", err)
	}
	return resp
}

// TestFaultPastDeadlineKillsWorker: a worker that does not stop after its
// job's deadline (hang: wedged; ignore-cancel: keeps stepping) costs the
// caller nothing, since the answer comes at the deadline, and is killed
// with its process group after the cancel grace; a hot spare takes its
// place at once.
func TestFaultPastDeadlineKillsWorker(t *testing.T) {
	const (
		timeout = 300 * time.Millisecond
		grace   = 300 * time.Millisecond
	)
	tests := []struct {
		fault string
		steps uint32
		by    deadlineBy
	}{
		{"hang", 30, byCaller},
		{"hang", 30, byServer},
		// 100 steps of 50 ms: 5 s of work that cancellation cannot stop.
		{"slow=50ms,ignore-cancel", 100, byCaller},
		{"slow=50ms,ignore-cancel", 100, byServer},
	}
	for _, tt := range tests {
		t.Run(tt.fault+"/"+tt.by.String(), func(t *testing.T) {
			d := startLoggedDaemon(t, faultYAML(1, 1, fmt.Sprintf("timeouts:\n  cancel_grace: %v\n  default: %v\n", grace, timeout)), faultFlag)
			old := d.waitReady("w0", 0)
			spare := d.waitSpare()

			_, late, err := generateBy(d, tt.by, timeout, tt.fault, fastRequest(1, tt.steps))
			call := fmt.Sprintf("Generate(%s, %v, %s)", tt.fault, timeout, tt.by)
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("%s = %v; want DEADLINE_EXCEEDED", call, err)
			}
			if late > 100*time.Millisecond {
				t.Errorf("%s returned %v after the deadline; want within 100ms", call, late)
			}
			if tt.by == byServer {
				// The server's own answer, not the caller's library.
				ei := checkStatus(t, call, err, codes.DeadlineExceeded, "DEADLINE_EXCEEDED")
				if ei.GetMetadata()["steps_done"] == "0" || ei.GetMetadata()["steps_total"] != fmt.Sprint(tt.steps) {
					t.Errorf("%s: ErrorInfo metadata = %v; want some of %d steps done", call, ei.GetMetadata(), tt.steps)
				}
			}
			// Whoever set the deadline, the server judged it by its clock:
			// the job's outcome is the deadline, not a cancellation (a
			// caller's deadline reaches the server as a cancel, often a
			// moment before the server's own timer fires).
			waitFor(t, 10*time.Second, "the job's outcome deadline in the log", func() bool {
				return d.logged("", map[string]any{"outcome": "deadline"})
			})

			// After the grace the wedged worker's group is killed and
			// reaped; the spare took over in the same breath.
			now := d.waitSlot(10*time.Second, "w0", "replaced once (its worker killed after the cancel grace)", func(w *hourglassv1.WorkerInfo) bool {
				return w.GetRestarts() == 1
			})
			if now.GetState() != hourglassv1.WorkerState_WORKER_STATE_READY || int(now.GetPid()) != spare {
				t.Errorf("slot w0 after the kill = %v; want READY on the hot spare (pid %d) at once", now, spare)
			}
			waitFor(t, 10*time.Second, fmt.Sprintf("old worker pid %d reaped", old.GetPid()), func() bool {
				return processGone(int(old.GetPid()))
			})
			waitFor(t, 10*time.Second, "the cancel-grace kill in the log", func() bool {
				return d.logged(killLine, map[string]any{"pid": old.GetPid()})
			})
			d.waitSpare() // a new spare refills the pool in the background

			resp := mustGenerate(t, d, fastRequest(2, 4))
			if resp.GetStats().GetWorkerId() != "w0" {
				t.Errorf("stats = %v; want worker w0", resp.GetStats())
			}
		})
	}
}

// TestFaultCrash: a worker that exits mid-job gives UNAVAILABLE with reason
// WORKER_CRASHED and is replaced; the retry with the same seed gives the
// same bytes as a run that never crashed.
func TestFaultCrash(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(1, 1, "timeouts:\n  cancel_grace: 300ms\n"), faultFlag)
	req := fastRequest(42, 30)
	want := mustGenerate(t, d, req).GetImages()
	old := d.waitReady("w0", 0)

	_, _, err := generateBy(d, byCaller, 20*time.Second, "crash", req)
	checkStatus(t, "Generate(crash)", err, codes.Unavailable, "WORKER_CRASHED")

	now := d.waitReady("w0", 1)
	if now.GetPid() == old.GetPid() {
		t.Fatalf("slot w0 still runs pid %d after its worker crashed", now.GetPid())
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("crashed worker pid %d reaped", old.GetPid()), func() bool {
		return processGone(int(old.GetPid()))
	})

	got := mustGenerate(t, d, req).GetImages()
	if len(got) != len(want) || len(got) == 0 {
		t.Fatalf("retry gave %d images; want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i].GetData(), want[i].GetData()) {
			t.Errorf("retry image %d differs from the run without faults (same seed)", i)
		}
	}
}

// TestFaultOutOfMemory: a worker that reports out of memory gives
// RESOURCE_EXHAUSTED with reason WORKER_OUT_OF_MEMORY, is kept (it is
// healthy, the job was too big) and takes the next job.
func TestFaultOutOfMemory(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(1, 0, ""), faultFlag)
	old := d.waitReady("w0", 0)

	_, _, err := generateBy(d, byCaller, 20*time.Second, "oom", fastRequest(1, 30))
	checkStatus(t, "Generate(oom)", err, codes.ResourceExhausted, "WORKER_OUT_OF_MEMORY")

	now := d.waitReady("w0", 0)
	if now.GetPid() != old.GetPid() {
		t.Fatalf("slot w0 runs pid %d after an out-of-memory job; want the same worker, pid %d", now.GetPid(), old.GetPid())
	}
	resp := mustGenerate(t, d, fastRequest(2, 4))
	if resp.GetStats().GetWorkerId() != "w0" {
		t.Errorf("stats = %v; want worker w0", resp.GetStats())
	}
	if now := d.waitReady("w0", 0); now.GetPid() != old.GetPid() {
		t.Errorf("slot w0 runs pid %d after the next job; want pid %d", now.GetPid(), old.GetPid())
	}
}

// TestFaultSlow: slow steps are fine within the deadline; past it the
// worker stops at its next step by itself and is kept.
func TestFaultSlow(t *testing.T) {
	const timeout = 150 * time.Millisecond // 10 steps of 30 ms need 300 ms
	d := startLoggedDaemon(t, faultYAML(1, 0, fmt.Sprintf("timeouts:\n  cancel_grace: 2s\n  default: %v\n", timeout)), faultFlag)
	old := d.waitReady("w0", 0)
	req := fastRequest(1, 10)

	// The deadline first: a completed slow run would teach admission that
	// this job takes 300 ms, and it would refuse it up front.
	_, late, err := generateBy(d, byServer, timeout, "slow=30ms", req)
	call := fmt.Sprintf("Generate(slow=30ms, %v)", timeout)
	ei := checkStatus(t, call, err, codes.DeadlineExceeded, "DEADLINE_EXCEEDED")
	if ei.GetMetadata()["steps_done"] == "10" {
		t.Errorf("%s: ErrorInfo metadata = %v; want the deadline mid-run", call, ei.GetMetadata())
	}
	if late > time.Second {
		t.Errorf("%s returned %v after the deadline", call, late)
	}
	// Cooperative stop: the same process is idle again, never killed.
	now := d.waitSlot(10*time.Second, "w0", "idle after the cancelled job", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetJobsDone() == 1
	})
	if now.GetPid() != old.GetPid() || now.GetRestarts() != 0 {
		t.Fatalf("slot w0 after the deadline = %v; want pid %d, 0 restarts", now, old.GetPid())
	}
	if d.logged(killLine, nil) {
		t.Errorf("a cooperative worker was killed (see the log)")
	}

	resp, _, err := generateBy(d, byCaller, 20*time.Second, "slow=30ms", req)
	if err != nil {
		t.Fatalf("Generate(slow=30ms, 20s) = %v; want OK", err)
	}
	if st := resp.GetStats(); st.GetStepsDone() != 10 || st.GetRunTime().AsDuration() < 300*time.Millisecond {
		t.Errorf("stats = %v; want 10 steps in at least 300ms", st)
	}
	if now := d.waitReady("w0", 0); now.GetPid() != old.GetPid() {
		t.Errorf("slot w0 runs pid %d; want pid %d", now.GetPid(), old.GetPid())
	}
}

// TestFaultIgnoredWithoutFlag: without --unsafe-fault-injection the
// hourglass-fault key does nothing.
func TestFaultIgnoredWithoutFlag(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(1, 0, ""))
	old := d.waitReady("w0", 0)
	for _, fault := range []string{"crash", "hang", "oom"} {
		if _, _, err := generateBy(d, byCaller, 20*time.Second, fault, fastRequest(1, 4)); err != nil {
			t.Errorf("Generate(%s) without %s = %v; want OK", fault, faultFlag, err)
		}
	}
	if now := d.waitReady("w0", 0); now.GetPid() != old.GetPid() || now.GetJobsDone() != 3 {
		t.Errorf("slot w0 = %v; want pid %d with 3 jobs done", now, old.GetPid())
	}
}

// TestCrashLoop: a slot whose worker dies 5 times within 30 s is held back;
// health says NOT_SERVING while no worker is ready and recovers by itself.
func TestCrashLoop(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(1, 0, "timeouts:\n  cancel_grace: 300ms\n"), faultFlag)
	for i := range 5 {
		d.waitReady("w0", uint32(i))
		_, _, err := generateBy(d, byCaller, 20*time.Second, "crash", fastRequest(uint64(i), 30))
		checkStatus(t, fmt.Sprintf("Generate(crash) #%d", i+1), err, codes.Unavailable, "WORKER_CRASHED")
	}

	health := func() healthpb.HealthCheckResponse_ServingStatus {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health Check: %v", err)
		}
		return resp.GetStatus()
	}
	// The fifth death within the window holds the slot back (1 s).
	waitFor(t, 10*time.Second, "slot w0 in BACKOFF while health is NOT_SERVING", func() bool {
		w := slotOf(d.info(), "w0")
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BACKOFF &&
			w.GetRestarts() == 5 && health() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if !d.logged("worker is crash-looping; holding it back", nil) {
		t.Errorf("no crash-loop line in the log")
	}
	waitFor(t, 20*time.Second, "health SERVING again", func() bool {
		return health() == healthpb.HealthCheckResponse_SERVING
	})
	d.waitReady("w0", 5)
	mustGenerate(t, d, fastRequest(9, 4))
}

// TestHeartbeat: a busy worker silent for timeouts.heartbeat is wedged: the
// caller gets UNAVAILABLE long before its deadline and the worker is
// replaced.
func TestHeartbeat(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(1, 1, "timeouts:\n  heartbeat: 500ms\n  cancel_grace: 300ms\n"), faultFlag)
	old := d.waitReady("w0", 0)
	start := time.Now()
	_, _, err := generateBy(d, byCaller, 20*time.Second, "hang", fastRequest(1, 30))
	elapsed := time.Since(start)
	checkStatus(t, "Generate(hang, 20s)", err, codes.Unavailable, "WORKER_CRASHED")
	if elapsed > 5*time.Second {
		t.Errorf("Generate(hang, 20s) answered after %v; want well before the deadline (heartbeat 500ms)", elapsed)
	}
	now := d.waitReady("w0", 1)
	if now.GetPid() == old.GetPid() {
		t.Fatalf("slot w0 still runs the wedged worker, pid %d", old.GetPid())
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("wedged worker pid %d reaped", old.GetPid()), func() bool {
		return processGone(int(old.GetPid()))
	})
	mustGenerate(t, d, fastRequest(2, 4))
}

// TestKillDaemonKillsWorkers: after kill -9 of hourglassd, with a job
// running, no worker process is alive a second later (parent-death signal).
func TestKillDaemonKillsWorkers(t *testing.T) {
	d := startLoggedDaemon(t, faultYAML(3, 1, ""), faultFlag)
	d.waitSpare()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := d.client.Generate(withFault(ctx, "hang"), fastRequest(1, 30))
		done <- err
	}()
	var pids []int
	waitFor(t, 10*time.Second, "a busy worker and 4 worker processes", func() bool {
		info := d.info()
		busy := false
		pids = pids[:0]
		for _, w := range info.GetWorkers() {
			busy = busy || w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY
			if w.GetPid() > 0 {
				pids = append(pids, int(w.GetPid()))
			}
		}
		return busy && len(pids) == 4
	})
	for _, pid := range d.workerPIDsEverStarted() {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}

	d.kill9(t)
	waitAllDead(t, time.Second, "after kill -9 of hourglassd, worker pids", pids)
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Generate(hang) in flight during kill -9 = %v; want UNAVAILABLE", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Generate(hang) in flight did not return after hourglassd died")
	}
}

// TestAdmission: a job estimated far beyond its deadline is refused at once
// without touching a worker; with admission off it runs and times out.
func TestAdmission(t *testing.T) {
	const timeout = 2 * time.Second
	// 4 images of 1024×1024×150 are 629 megapixel-steps: 629 s estimated
	// at 1 s per megapixel-step, and over 10 s of real work on the CPU
	// worker, whose first step comes within a fraction of a second even
	// on a busy machine (a 2048×2048 image costs several times as much
	// before its first step). 1024×1024×30 runs in about 1 s there: with
	// admission off it would finish inside a 2 s deadline.
	job := func() *hourglassv1.GenerateRequest {
		return &hourglassv1.GenerateRequest{
			Prompt: "a very long exposure", Seed: proto.Uint64(1),
			Width: proto.Uint32(1024), Height: proto.Uint32(1024), Steps: proto.Uint32(150),
			ImageCount: proto.Uint32(4),
		}
	}
	t.Run("refused", func(t *testing.T) {
		d := startLoggedDaemon(t, "admission:\n  seconds_per_megapixel_step: 1\n", "--workers", "2")
		d.waitSpare()      // the pool is complete: every pid is known
		before := d.info() // also opens the connection: not part of the timing

		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		_, err := d.client.Generate(ctx, job())
		elapsed := time.Since(start)
		call := fmt.Sprintf("Generate(4x1024x1024x150, %v)", timeout)
		ei := checkStatus(t, call, err, codes.DeadlineExceeded, "DEADLINE_TOO_SHORT")
		if elapsed >= 50*time.Millisecond {
			t.Errorf("%s refused after %v; want under 50ms", call, elapsed)
		}
		if ei.GetMetadata()["estimate_ms"] == "" || ei.GetMetadata()["remaining_ms"] == "" {
			t.Errorf("%s: ErrorInfo metadata = %v; want estimate_ms and remaining_ms", call, ei.GetMetadata())
		}
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, "planned run time") || !strings.Contains(msg, "remain") {
			t.Errorf("%s message %q; want the planned run time and the remaining time", call, msg)
		}

		after := d.info()
		for _, w := range after.GetWorkers() {
			if w.GetJobsDone() != 0 || w.GetRestarts() != 0 || w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY {
				t.Errorf("worker %v after a refused job; want untouched", w)
			}
		}
		if fmt.Sprint(pidsOf(before)) != fmt.Sprint(pidsOf(after)) {
			t.Errorf("worker pids %v before, %v after a refused job; want the same", pidsOf(before), pidsOf(after))
		}
		if d.logged("job started", nil) {
			t.Errorf("a worker started a job admission refused (see the log)")
		}
	})
	t.Run("disabled", func(t *testing.T) {
		d := startLoggedDaemon(t, fmt.Sprintf("admission:\n  enabled: false\ntimeouts:\n  default: %v\n", timeout), "--workers", "1")
		_, late, err := generateBy(d, byServer, timeout, "", job())
		call := fmt.Sprintf("Generate(4x1024x1024x150, %v, admission off)", timeout)
		ei := checkStatus(t, call, err, codes.DeadlineExceeded, "DEADLINE_EXCEEDED")
		if done := ei.GetMetadata()["steps_done"]; done == "" || done == "0" {
			t.Errorf("%s: ErrorInfo metadata = %v; want steps_done > 0", call, ei.GetMetadata())
		}
		if late < 0 || late > time.Second {
			t.Errorf("%s returned %v after the deadline; want at the deadline", call, late)
		}
		if !d.logged("job started", nil) {
			t.Errorf("no worker logged the job as started (see the log)")
		}
	})
}

func pidsOf(info *hourglassv1.GetServerInfoResponse) []int32 {
	var pids []int32
	for _, w := range info.GetWorkers() {
		pids = append(pids, w.GetPid())
	}
	return pids
}

// TestAdmissionOverloaded: a job that could finish on an idle worker but not
// after the estimated wait for the busy one is refused with
// RESOURCE_EXHAUSTED, reason OVERLOADED and a RetryInfo.
func TestAdmissionOverloaded(t *testing.T) {
	// At 0.1 s per megapixel-step the occupying job (1024×1024×30 = 31.5
	// megapixel-steps) is estimated at 3.15 s and planned at 4.72 s (a
	// cold model plans with 1.5 × the mean), and really runs 30 steps of
	// at least 1 s. The probe (128×96×4) is planned at 7 ms: on an idle
	// worker it fits a 1 s deadline, behind the occupying job (4.72 s
	// minus the little it has run) it does not. It would fit once the
	// occupying job's plan has 1 s left: the RetryInfo says so.
	const occupyPlanned = 4719 * time.Millisecond
	d := startLoggedDaemon(t, "workers:\n  count: 1\n  spares: 0\nadmission:\n  seconds_per_megapixel_step: 0.1\n", faultFlag)
	old := d.waitReady("w0", 0)

	occupyCtx, stopOccupy := context.WithTimeout(context.Background(), time.Minute)
	defer stopOccupy()
	occupied := make(chan error, 1)
	go func() {
		req := &hourglassv1.GenerateRequest{Prompt: "a slow one", Seed: proto.Uint64(1),
			Width: proto.Uint32(1024), Height: proto.Uint32(1024), Steps: proto.Uint32(30)}
		_, err := d.client.Generate(withFault(occupyCtx, "slow=1s"), req)
		occupied <- err
	}()
	d.waitSlot(10*time.Second, "w0", "busy", func(w *hourglassv1.WorkerInfo) bool {
		return w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY
	})

	_, _, err := generateBy(d, byCaller, time.Second, "", fastRequest(2, 4))
	call := "Generate(128x96x4, 1s) behind a 3s job"
	checkStatus(t, call, err, codes.ResourceExhausted, "OVERLOADED")
	ri := retryInfo(err)
	// The probe's own plan (7 ms) adds to it; what the occupying job has
	// run so far (a few milliseconds; a second at most on a stalled
	// machine) takes from it.
	low, high := occupyPlanned-2*time.Second, occupyPlanned-time.Second+50*time.Millisecond
	if delay := ri.GetRetryDelay().AsDuration(); ri == nil || delay <= low || delay > high {
		t.Errorf("%s: RetryInfo = %v; want the planned rest of the occupying job less the 1 s timeout, in (%v, %v]",
			call, ri, low, high)
	}

	// Once the worker is free, the same job is admitted.
	stopOccupy()
	if err := <-occupied; status.Code(err) != codes.Canceled {
		t.Errorf("occupying Generate = %v; want CANCELLED", err)
	}
	if now := d.waitReady("w0", 0); now.GetPid() != old.GetPid() {
		t.Errorf("slot w0 runs pid %d after a cancelled slow job; want pid %d", now.GetPid(), old.GetPid())
	}
	if _, _, err := generateBy(d, byCaller, time.Second, "", fastRequest(2, 4)); err != nil {
		t.Errorf("%s once the worker is idle = %v; want OK", call, err)
	}
}
