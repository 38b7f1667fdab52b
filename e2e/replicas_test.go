package e2e

// End-to-end tests of the Go SDK (package client) over several hourglassd
// replicas on loopback: a replica killed with SIGKILL under load, a
// draining replica, retries that keep the seed, and a saturated replica
// whose refusals send calls to the others. Each replica is a
// separate hourglassd with its own workers, as one per GPU host would be.
//
// Which replica got which try is seen from both sides: the client's view
// comes from a grpc-go stats handler (one record per attempt, retries
// included), the servers' from each replica's "grpc call" log lines.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// replicaFaults lets the hourglass-fault metadata key reach a replica's
// workers.
const replicaFaults = "--unsafe-fault-injection"

// replicaYAML configures a replica with workers slots, spares hot spares
// and a fixed admission rate: the start-up calibration would add jobs to
// the logs the tests count. extra is appended as it is.
func replicaYAML(workers, spares int, extra string) string {
	return fmt.Sprintf("workers:\n  count: %d\n  spares: %d\nadmission:\n  seconds_per_megapixel_step: 0.05\n", workers, spares) + extra
}

// startReplicas starts n hourglassd replicas with the same configuration.
func startReplicas(t *testing.T, n int, yaml string, args ...string) []*daemon {
	t.Helper()
	ds := make([]*daemon, n)
	for i := range ds {
		ds[i] = startDaemon(t, yaml, args...)
	}
	t.Cleanup(func() { // after every replica stopped
		if t.Failed() {
			for i, d := range ds {
				t.Logf("replica %d (%s) log:\n%s", i, d.addr, d.Logs())
			}
		}
	})
	return ds
}

// replicaRequest is a small job: 8 steps of 128×96, a few milliseconds on
// the CPU worker (plus the slow fault's delay per step when one is set).
// seed nil leaves the seed to the client.
func replicaRequest(seed *uint64) *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: "a lighthouse on a cliff", Seed: seed,
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(8),
	}
}

// replicaAttempt is one try of a call, as the client's stats handler saw
// it.
type replicaAttempt struct {
	call   int    // the call's id (replicaCallID), 0 when it had none
	method string // "Generate" or "GenerateStream"
	addr   string // the replica it was sent to; "" when none was picked
	seed   *uint64
	code   codes.Code
	reason string // of the ErrorInfo of a failed attempt
	ended  bool
	begin  time.Time
	end    time.Time
}

type (
	replicaCallKey    struct{}
	replicaAttemptKey struct{}
)

// replicaCallID tags the calls made with ctx so that their attempts can be
// found.
func replicaCallID(ctx context.Context, id int) context.Context {
	return context.WithValue(ctx, replicaCallKey{}, id)
}

// replicaAttempts is a grpc-go stats handler recording every attempt of
// the GenerateService calls: grpc-go tags each attempt, retries included,
// with its own context.
type replicaAttempts struct {
	mu       sync.Mutex
	attempts []*replicaAttempt
}

func (l *replicaAttempts) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if !strings.HasPrefix(info.FullMethodName, "/hourglass.v1.GenerateService/Generate") {
		return ctx // health watches, GetServerInfo
	}
	a := &replicaAttempt{method: path.Base(info.FullMethodName)}
	a.call, _ = ctx.Value(replicaCallKey{}).(int)
	l.mu.Lock()
	l.attempts = append(l.attempts, a)
	l.mu.Unlock()
	return context.WithValue(ctx, replicaAttemptKey{}, a)
}

func (l *replicaAttempts) HandleRPC(ctx context.Context, s stats.RPCStats) {
	a, _ := ctx.Value(replicaAttemptKey{}).(*replicaAttempt)
	if a == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch s := s.(type) {
	case *stats.Begin:
		a.begin = s.BeginTime
	case *stats.OutHeader:
		a.addr = s.RemoteAddr.String()
	case *stats.OutPayload:
		if req, ok := s.Payload.(*hourglassv1.GenerateRequest); ok && req.Seed != nil {
			a.seed = proto.Uint64(req.GetSeed())
		}
	case *stats.End:
		a.ended, a.code, a.reason, a.end = true, status.Code(s.Error), client.Reason(s.Error), s.EndTime
	}
}

func (l *replicaAttempts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (l *replicaAttempts) HandleConn(context.Context, stats.ConnStats) {}

// since returns copies of the attempts from index from on, and the index
// to pass next time.
func (l *replicaAttempts) since(from int) ([]replicaAttempt, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]replicaAttempt, 0, len(l.attempts)-from)
	for _, a := range l.attempts[from:] {
		out = append(out, *a)
	}
	return out, len(l.attempts)
}

// ofCall returns the attempts of call id, in order.
func (l *replicaAttempts) ofCall(id int) []replicaAttempt {
	all, _ := l.since(0)
	var out []replicaAttempt
	for _, a := range all {
		if a.call == id {
			out = append(out, a)
		}
	}
	return out
}

// newReplicaClient is an SDK client over every replica, recording its
// attempts in log and counting the stream restarts in restarts, with
// options opts besides.
func newReplicaClient(t *testing.T, ds []*daemon, log *replicaAttempts, restarts *atomicCounter, opts ...client.Option) *client.Client {
	t.Helper()
	addrs := make([]string, len(ds))
	for i, d := range ds {
		addrs[i] = d.addr
	}
	c, err := client.New(strings.Join(addrs, ","), append([]client.Option{client.WithInsecure(),
		client.WithGRPCDialOptions(grpc.WithStatsHandler(log)),
		client.OnStreamRetry(func(int, error) { restarts.add(1) })}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCounter) add(d int) {
	c.mu.Lock()
	c.n += d
	c.mu.Unlock()
}

func (c *atomicCounter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// replicaCallLine is one "grpc call" line of a replica's log for a
// GenerateService job call.
type replicaCallLine struct {
	Method string
	Code   string
}

// replicaCalls returns the replica's "grpc call" lines for Generate and
// GenerateStream, in log order, and with afterMsg set only those logged
// after the first line with that message.
func replicaCalls(d *daemon, afterMsg string) []replicaCallLine {
	var (
		out  []replicaCallLine
		seen = afterMsg == ""
	)
	for line := range strings.SplitSeq(d.Logs(), "\n") {
		var rec struct {
			Msg, Method, Code string
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if rec.Msg == afterMsg {
			seen = true
		}
		if !seen || rec.Msg != "grpc call" || !strings.HasPrefix(rec.Method, "/hourglass.v1.GenerateService/Generate") {
			continue
		}
		out = append(out, replicaCallLine{Method: path.Base(rec.Method), Code: rec.Code})
	}
	return out
}

// servedOK counts the replica's job calls that ended OK.
func servedOK(d *daemon) int {
	n := 0
	for _, l := range replicaCalls(d, "") {
		if l.Code == codes.OK.String() {
			n++
		}
	}
	return n
}

// replicaResult is how one call of the load ended.
type replicaResult struct {
	call   int
	stream bool
	end    time.Time
	late   time.Duration // how long after its deadline it returned; < 0: before
	err    error
	seed   uint64 // of the job, from its stats
	image  []byte
}

// runReplicaCall makes call id through c, unary or streamed, without a
// seed (the client picks it), with a 5 s deadline and the slow fault (20 ms
// more per step, so that a job takes about 160 ms and a replica is rarely
// idle).
func runReplicaCall(c *client.Client, id int, stream bool) replicaResult {
	ctx, cancel := context.WithTimeout(replicaCallID(context.Background(), id), 5*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	ctx = metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "slow=20ms")
	var (
		resp *hourglassv1.GenerateResponse
		err  error
	)
	if stream {
		resp, err = c.GenerateWithProgress(ctx, replicaRequest(nil), nil)
	} else {
		resp, err = c.Generate(ctx, replicaRequest(nil))
	}
	r := replicaResult{call: id, stream: stream, end: time.Now(), late: time.Since(deadline), err: err}
	if err == nil && len(resp.GetImages()) == 1 {
		r.seed, r.image = resp.GetStats().GetSeed(), resp.GetImages()[0].GetData()
	}
	return r
}

// Three replicas under steady load; one is killed with SIGKILL. Every call
// still ends OK (those on the killed replica are retried on another) or
// with a documented status (a refusal for load, or DEADLINE_EXCEEDED at
// the deadline), none returns after its deadline, and the load spreads
// over the two that are left.
func TestReplicaKilledUnderLoad(t *testing.T) {
	ds := startReplicas(t, 3, replicaYAML(2, 0, ""), replicaFaults)
	var (
		log      replicaAttempts
		restarts atomicCounter
	)
	c := newReplicaClient(t, ds, &log, &restarts)

	const callers = 6
	var (
		mu      sync.Mutex
		results []replicaResult
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range callers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := w*100000 + i + 1
				r := runReplicaCall(c, id, w%2 == 1)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	completedAfter := func(at time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range results {
			if r.end.After(at) {
				n++
			}
		}
		return n
	}

	waitFor(t, 30*time.Second, "every replica to serve calls", func() bool {
		return servedOK(ds[0]) >= 3 && servedOK(ds[1]) >= 3 && servedOK(ds[2]) >= 3
	})
	// Kill the replica while it runs a job, so that calls are cut off.
	victim := ds[0]
	waitFor(t, 10*time.Second, "a busy worker on the replica to kill", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := victim.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
		if err != nil {
			t.Fatalf("GetServerInfo: %v", err)
		}
		for _, w := range info.GetWorkers() {
			if w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY {
				return true
			}
		}
		return false
	})
	victim.killed = true // its workers are checked below, not by the harness
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	<-victim.exited
	before := []int{servedOK(ds[1]), servedOK(ds[2])}

	waitFor(t, 60*time.Second, "60 calls after the kill", func() bool { return completedAfter(killedAt) >= 60 })
	stopLoad()

	// Every call ended OK, or was refused for load with RetryInfo, or ran
	// out of time (documented answers); none outlived its deadline.
	var ok, overloaded, timedOut, afterKill int
	for _, r := range results {
		switch _, busy := client.IsOverloaded(r.err); {
		case r.err == nil:
			ok++
		case busy:
			overloaded++
		case client.IsDeadlineExceeded(r.err):
			timedOut++
		default:
			t.Errorf("call %d (stream %v) failed: %v (reason %q)", r.call, r.stream, r.err, client.Reason(r.err))
		}
		if r.late > 250*time.Millisecond {
			t.Errorf("call %d returned %v after its deadline", r.call, r.late)
		}
		if r.end.After(killedAt) {
			afterKill++
		}
	}

	// Calls cut off on the killed replica were tried again elsewhere, with
	// the seed of their first try, and made the images a call that was
	// never cut off makes.
	var retried []replicaResult
	for _, r := range results {
		attempts := log.ofCall(r.call)
		if r.err != nil || len(attempts) < 2 {
			continue
		}
		first, last := attempts[0], attempts[len(attempts)-1]
		if first.addr != victim.addr || first.code == codes.OK || last.addr == victim.addr {
			continue
		}
		for _, a := range attempts {
			if a.seed == nil || *a.seed != r.seed {
				t.Errorf("call %d: an attempt to %s carried seed %v; want the job's %d", r.call, a.addr, a.seed, r.seed)
			}
		}
		retried = append(retried, r)
	}
	if len(retried) == 0 {
		t.Errorf("no call was retried after the kill: none was cut off on %s (%d stream restarts)", victim.addr, restarts.get())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range retried[:min(len(retried), 3)] {
		direct, err := ds[1].client.Generate(ctx, replicaRequest(proto.Uint64(r.seed)))
		if err != nil {
			t.Fatalf("direct Generate with seed %d: %v", r.seed, err)
		}
		if !bytes.Equal(direct.GetImages()[0].GetData(), r.image) {
			t.Errorf("call %d, retried after the kill: image differs from a direct call's with seed %d", r.call, r.seed)
		}
	}

	// The load spread over the two replicas left.
	grew := []int{servedOK(ds[1]) - before[0], servedOK(ds[2]) - before[1]}
	if grew[0] < afterKill/4 || grew[1] < afterKill/4 {
		t.Errorf("after the kill, the replicas left served %v of %d calls; want each at least a quarter", grew, afterKill)
	}
	t.Logf("%d calls: %d OK, %d refused for load, %d out of time; %d after the kill, served %v by the two left; %d retried after a cut-off, %d stream restarts",
		len(results), ok, overloaded, timedOut, afterKill, grew, len(retried), restarts.get())

	// The killed replica's workers died with it (parent-death signal).
	for _, pid := range victim.workerPIDsEverStarted() {
		waitFor(t, 10*time.Second, fmt.Sprintf("worker %d of the killed replica to die", pid), func() bool { return processDead(pid) })
	}
}

// A draining replica (SIGTERM, health NOT_SERVING, a job still running)
// gets no new calls: the client's health checks take it out of the
// rotation, and the calls succeed on the others.
func TestReplicaDrainingGetsNoCalls(t *testing.T) {
	draining := startDaemon(t, replicaYAML(1, 0, "timeouts:\n  drain: 30s\n"), replicaFaults)
	ds := append([]*daemon{draining}, startReplicas(t, 2, replicaYAML(1, 0, ""))...)
	var (
		log      replicaAttempts
		restarts atomicCounter
	)
	c := newReplicaClient(t, ds, &log, &restarts)
	call := func(id int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(replicaCallID(context.Background(), id), 10*time.Second)
		defer cancel()
		var err error
		if id%2 == 0 {
			_, err = c.Generate(ctx, replicaRequest(nil))
		} else {
			_, err = c.GenerateWithProgress(ctx, replicaRequest(nil), nil)
		}
		if err != nil {
			t.Fatalf("call %d: %v", id, err)
		}
	}
	id := 0
	waitFor(t, 20*time.Second, "every replica to serve a call", func() bool {
		id++
		call(id)
		return servedOK(ds[0]) > 0 && servedOK(ds[1]) > 0 && servedOK(ds[2]) > 0
	})

	// A long job keeps the replica in its drain.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	longJob := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		stream, err := draining.client.GenerateStream(metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "slow=100ms"),
			&hourglassv1.GenerateRequest{Prompt: "a long night", Width: proto.Uint32(64), Height: proto.Uint32(64), Steps: proto.Uint32(150)})
		if err != nil {
			longJob <- err
			return
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				longJob <- err
				return
			}
			if ev.GetStarted() != nil {
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case err := <-longJob:
		t.Fatalf("the long job ended before it started: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the long job did not start within 20s")
	}

	_, mark := log.since(0)
	firstID := id + 1
	if err := draining.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the replica to report NOT_SERVING", func() bool {
		resp, err := draining.health.Check(ctx, &healthpb.HealthCheckRequest{Service: client.ServiceName})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	// Until the client's health watch hears of it, a call may still pick
	// the draining replica: it is refused there (UNAVAILABLE) and retried
	// on another. Six calls in a row elsewhere (two rounds of three) mean
	// the client took it out; without health checks it would stay in the
	// rotation until the drain ends.
	streak, from := 0, mark
	waitFor(t, 10*time.Second, "calls to avoid the draining replica", func() bool {
		id++
		call(id)
		var attempts []replicaAttempt
		attempts, from = log.since(from)
		streak++
		for _, a := range attempts {
			if a.addr == draining.addr {
				streak = 0
			}
		}
		return streak >= 6
	})
	for range 30 {
		id++
		call(id)
	}
	attempts, _ := log.since(mark)
	var toDraining, after int
	for _, a := range attempts {
		if a.addr != draining.addr {
			after++
			continue
		}
		toDraining, after = toDraining+1, 0
		if a.code != codes.Unavailable {
			t.Errorf("an attempt to the draining replica ended %v; want UNAVAILABLE (refused)", a.code)
		}
	}
	if after < 36 {
		t.Errorf("an attempt went to the draining replica %d attempts before the end; want none in the last 36 calls", after)
	}

	// The replica's own log agrees: after its drain began, it logged only
	// the refusals the client saw, and is still draining.
	lines := replicaCalls(draining, "draining")
	for _, l := range lines {
		if l.Code != codes.Unavailable.String() {
			t.Errorf("the draining replica logged a %s call with code %s", l.Method, l.Code)
		}
	}
	if len(lines) != toDraining {
		t.Errorf("the draining replica logged %d calls after its drain began; the client sent it %d", len(lines), toDraining)
	}
	select {
	case <-draining.exited:
		t.Fatal("the draining replica exited before the calls ended: the test checked nothing")
	default:
	}
	t.Logf("%d calls after SIGTERM, %d attempts; %d reached the draining replica and were retried elsewhere", id-firstID+1, len(attempts), toDraining)

	cancel()
	if err := <-longJob; status.Code(err) != codes.Canceled {
		t.Errorf("the long job ended with %v; want CANCELLED", err)
	}
}

// A call retried after UNAVAILABLE keeps the seed the client fixed before
// its first try, so its image is byte for byte the image of a call that
// was never retried. The first try crashes its worker (the crash fault,
// honoured on replica A only); the retry goes to replica B, which ignores
// the fault and succeeds.
func TestReplicaRetryReusesSeed(t *testing.T) {
	// A's spare takes over at once after each crash.
	a := startDaemon(t, replicaYAML(1, 1, ""), replicaFaults)
	b := startDaemon(t, replicaYAML(1, 0, ""))
	var (
		log      replicaAttempts
		restarts atomicCounter
	)
	c := newReplicaClient(t, []*daemon{a, b}, &log, &restarts)
	crash := func(id int) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithTimeout(replicaCallID(context.Background(), id), 20*time.Second)
		return metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "crash"), cancel
	}
	direct := func(d *daemon, seed uint64) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := d.client.Generate(ctx, replicaRequest(proto.Uint64(seed)))
		if err != nil {
			t.Fatalf("direct Generate on %s with seed %d: %v", d.addr, seed, err)
		}
		return resp.GetImages()[0].GetData()
	}

	t.Run("Generate", func(t *testing.T) {
		for id := 1; id <= 10; id++ {
			ctx, cancel := crash(id)
			req := replicaRequest(nil)
			resp, err := c.Generate(ctx, req)
			cancel()
			if err != nil {
				t.Fatalf("Generate = %v; want OK, retried when it crashed", err)
			}
			if req.Seed != nil {
				t.Fatal("the client changed the caller's request")
			}
			attempts := log.ofCall(id)
			if len(attempts) == 0 {
				t.Fatalf("call %d: no attempt recorded", id)
			}
			if attempts[0].addr != a.addr {
				continue // B ignored the fault: nothing to retry
			}
			first, last := attempts[0], attempts[len(attempts)-1]
			if len(attempts) < 2 || first.code != codes.Unavailable || first.reason != client.ReasonWorkerCrashed ||
				last.addr != b.addr || last.code != codes.OK {
				t.Fatalf("attempts %+v; want a crash on A (%s), then OK on B (%s)", attempts, a.addr, b.addr)
			}
			seed := resp.GetStats().GetSeed()
			for _, at := range attempts {
				if at.seed == nil || *at.seed != seed {
					t.Fatalf("attempt to %s carried seed %v; want the job's %d on every try", at.addr, at.seed, seed)
				}
			}
			image := resp.GetImages()[0].GetData()
			if !bytes.Equal(image, direct(b, seed)) || !bytes.Equal(image, direct(a, seed)) {
				t.Errorf("the retried call's image differs from direct calls' with seed %d", seed)
			}
			return
		}
		t.Fatal("no call's first try went to replica A in 10 calls")
	})

	t.Run("GenerateStream", func(t *testing.T) {
		for id := 101; id <= 110; id++ {
			before := restarts.get()
			ctx, cancel := crash(id)
			var (
				seeds []uint64
				image []byte
			)
			for ev, err := range c.GenerateStream(ctx, replicaRequest(nil)) {
				if err != nil {
					cancel()
					t.Fatalf("GenerateStream = %v; want OK, restarted when it crashed", err)
				}
				if s := ev.GetStarted(); s != nil {
					seeds = append(seeds, s.GetSeed())
				}
				if img := ev.GetImage(); img != nil {
					image = img.GetData()
				}
			}
			cancel()
			if restarts.get() == before {
				continue // B ran it: nothing to restart
			}
			// The first try crashed after its first step, after the
			// started event: grpc-go could not retry it, the client did.
			if len(seeds) != 2 || seeds[0] != seeds[1] {
				t.Fatalf("started events with seeds %v; want two with one seed", seeds)
			}
			if attempts := log.ofCall(id); len(attempts) != 2 || attempts[0].addr != a.addr || attempts[0].reason != client.ReasonWorkerCrashed ||
				attempts[1].addr != b.addr || attempts[1].code != codes.OK {
				t.Fatalf("attempts %+v; want a crash on A (%s), then OK on B (%s)", attempts, a.addr, b.addr)
			}
			if !bytes.Equal(image, direct(b, seeds[0])) {
				t.Errorf("the restarted stream's image differs from a direct call's with seed %d", seeds[0])
			}
			return
		}
		t.Fatal("no stream's first try went to replica A in 10 calls")
	})
}

// A replica that refuses calls for load does not fail them: the client
// moves each call it refuses to another replica at once, with the same
// seed. The saturated replica has one worker and room for one queued job;
// a long job runs there and another waits, so every new job gets
// RESOURCE_EXHAUSTED QUEUE_FULL (or OVERLOADED). Every call made over the
// three replicas succeeds, and those that reached the saturated one went
// on to another without a backoff, as the client's OnLoadRefusal, its
// stats handler and the saturated replica's own log agree.
func TestReplicaRefusalMovesCall(t *testing.T) {
	full := startDaemon(t, replicaYAML(1, 0, "queue:\n  max: 1\n"), replicaFaults)
	ds := append([]*daemon{full}, startReplicas(t, 2, replicaYAML(1, 0, ""))...)
	info := func() *hourglassv1.GetServerInfoResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := full.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
		if err != nil {
			t.Fatalf("GetServerInfo: %v", err)
		}
		return resp
	}

	// Two long jobs (150 steps of 100 ms) saturate the replica: the first
	// runs, the second waits in the queue. They end when the test does.
	longCtx, cancelLong := context.WithCancel(context.Background())
	long := make(chan error, 2)
	startLong := func() {
		go func() {
			ctx := metadata.AppendToOutgoingContext(longCtx, "hourglass-fault", "slow=100ms")
			stream, err := full.client.GenerateStream(ctx, &hourglassv1.GenerateRequest{Prompt: "a long night",
				Width: proto.Uint32(64), Height: proto.Uint32(64), Steps: proto.Uint32(150)})
			for err == nil {
				_, err = stream.Recv()
			}
			long <- err
		}()
	}
	var longEnded []error
	defer func() {
		cancelLong()
		for len(longEnded) < 2 {
			longEnded = append(longEnded, <-long)
		}
		for _, err := range longEnded {
			if status.Code(err) != codes.Canceled {
				t.Errorf("a long job ended with %v; want CANCELLED when the test ended", err)
			}
		}
	}()
	noLongEnded := func() {
		t.Helper()
		select {
		case err := <-long:
			longEnded = append(longEnded, err)
			t.Fatalf("a long job ended before the calls: %v", err)
		default:
		}
	}
	startLong()
	waitFor(t, 20*time.Second, "the first long job to run", func() bool {
		noLongEnded()
		for _, w := range info().GetWorkers() {
			if w.GetState() == hourglassv1.WorkerState_WORKER_STATE_BUSY {
				return true
			}
		}
		return false
	})
	startLong()
	waitFor(t, 20*time.Second, "the second long job to wait in the queue", func() bool {
		noLongEnded()
		return info().GetQueueDepth() == 1
	})
	// The replica now refuses a job for load.
	probeCtx, cancelProbe := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := full.client.Generate(probeCtx, replicaRequest(nil))
	cancelProbe()
	if reason := client.Reason(err); status.Code(err) != codes.ResourceExhausted ||
		(reason != client.ReasonQueueFull && reason != client.ReasonOverloaded) || client.QuotaViolations(err) != nil {
		t.Fatalf("a job sent to the saturated replica: %v (reason %q); want RESOURCE_EXHAUSTED QUEUE_FULL or OVERLOADED", err, client.Reason(err))
	}

	var (
		log      replicaAttempts
		restarts atomicCounter
		refused  []loadRefusal
		mu       sync.Mutex
	)
	c := newReplicaClient(t, ds, &log, &restarts, client.OnLoadRefusal(func(attempt int, replica string, err error) {
		mu.Lock()
		defer mu.Unlock()
		refused = append(refused, loadRefusal{attempt: attempt, replica: replica, err: err})
	}))
	refusals := func() []loadRefusal {
		mu.Lock()
		defer mu.Unlock()
		return append([]loadRefusal(nil), refused...)
	}
	calls := 0
	waitFor(t, 30*time.Second, "eight calls refused by the saturated replica", func() bool {
		calls++
		ctx, cancel := context.WithTimeout(replicaCallID(context.Background(), calls), 10*time.Second)
		defer cancel()
		if calls%2 == 0 {
			_, err = c.Generate(ctx, replicaRequest(nil))
		} else {
			_, err = c.GenerateWithProgress(ctx, replicaRequest(nil), nil)
		}
		if err != nil {
			t.Fatalf("call %d: %v (reason %q); want OK, moved off the saturated replica", calls, err, client.Reason(err))
		}
		return len(refusals()) >= 8
	})
	noLongEnded()

	// Each refusal came from the saturated replica, on a call's first try.
	for _, r := range refusals() {
		if reason := client.Reason(r.err); r.replica != full.addr || r.attempt != 1 ||
			(reason != client.ReasonQueueFull && reason != client.ReasonOverloaded) {
			t.Errorf("OnLoadRefusal(%d, %s, %v); want the first try refused by %s for load", r.attempt, r.replica, r.err, full.addr)
		}
	}
	// A call that reached it was refused there, then succeeded on another
	// replica at once with the same seed; no call was served there.
	moved := 0
	for id := 1; id <= calls; id++ {
		attempts := log.ofCall(id)
		if len(attempts) == 0 || attempts[0].addr != full.addr {
			if len(attempts) != 1 || attempts[0].code != codes.OK {
				t.Errorf("call %d: attempts %+v; want one, OK, on another replica", id, attempts)
			}
			continue
		}
		moved++
		if len(attempts) != 2 {
			t.Errorf("call %d: attempts %+v; want two, refused on %s, then OK", id, attempts, full.addr)
			continue
		}
		first, second := attempts[0], attempts[1]
		if first.code != codes.ResourceExhausted || second.addr == full.addr || second.code != codes.OK {
			t.Errorf("call %d: attempts %+v; want RESOURCE_EXHAUSTED on %s, then OK on another replica", id, attempts, full.addr)
		}
		if first.seed == nil || second.seed == nil || *first.seed != *second.seed {
			t.Errorf("call %d: seeds %v then %v; want one", id, first.seed, second.seed)
		}
		// At once: the smallest retry backoff is 80 ms.
		if gap := second.begin.Sub(first.end); gap > 80*time.Millisecond {
			t.Errorf("call %d: moved %v after the refusal; want at once", id, gap)
		}
	}
	if moved != len(refusals()) {
		t.Errorf("%d calls moved off the saturated replica; OnLoadRefusal reported %d", moved, len(refusals()))
	}
	// The saturated replica's log agrees: it refused those calls (and the
	// probe), and served none. Its log lines follow its answers.
	var lines []replicaCallLine
	waitFor(t, 10*time.Second, "the saturated replica to log every refusal", func() bool {
		lines = replicaCalls(full, "")
		return len(lines) >= moved+1
	})
	for _, l := range lines {
		if l.Code != codes.ResourceExhausted.String() {
			t.Errorf("the saturated replica logged a %s call with code %s; want only refusals", l.Method, l.Code)
		}
	}
	if len(lines) != moved+1 {
		t.Errorf("the saturated replica logged %d calls; want %d refusals and the probe", len(lines), moved)
	}
	if restarts.get() != 0 {
		t.Errorf("%d stream restarts; want none (a move is not a restart)", restarts.get())
	}
	reasons := map[string]int{}
	for _, r := range refusals() {
		reasons[client.Reason(r.err)]++
	}
	t.Logf("%d calls over three replicas, all OK; %d refused by the saturated one (%v) and moved", calls, moved, reasons)
}

// loadRefusal is one report of client.OnLoadRefusal.
type loadRefusal struct {
	attempt int
	replica string
	err     error
}

// The CLI balances over its --addr list too: with one replica killed,
// generate succeeds on the other, and health reports each replica.
func TestReplicaCLI(t *testing.T) {
	ds := startReplicas(t, 2, replicaYAML(1, 0, ""))
	ds[0].killed = true
	if err := ds[0].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-ds[0].exited
	addrs := ds[0].addr + "," + ds[1].addr
	run := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "hourglass"), args...)
		cmd.Env = append(os.Environ(), "HOURGLASS_TOKEN=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}

	out := filepath.Join(t.TempDir(), "fox.png")
	code, stdout, stderr := run("generate", "--addr", addrs, "--prompt", "a fox", "--width", "128", "--height", "96", "--steps", "4", "-o", out, "--json")
	if code != 0 || !strings.HasPrefix(stdout, out+"\n") {
		t.Fatalf("generate: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if _, err := os.Stat(out); err != nil {
		t.Error(err)
	}

	code, stdout, stderr = run("health", "--addr", addrs)
	// One line per replica: ADDR STATUS, or ADDR CODE: message.
	var fields [][]string
	for line := range strings.Lines(stdout) {
		fields = append(fields, strings.Fields(line))
	}
	if code != 24 || len(fields) != 2 || len(fields[0]) < 2 || !slices.Equal(fields[0][:2], []string{ds[0].addr, "UNAVAILABLE:"}) ||
		!slices.Equal(fields[1], []string{ds[1].addr, "SERVING"}) {
		t.Errorf("health: exit %d, want 24 (UNAVAILABLE)\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, pid := range ds[0].workerPIDsEverStarted() {
		waitFor(t, 10*time.Second, fmt.Sprintf("worker %d of the killed replica to die", pid), func() bool { return processDead(pid) })
	}
}
