package client_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// Refusals a replica answers with, each naming the replica in its message
// so that the test can tell which one the caller got.
func refusedOverloaded(addr string) error {
	return detailed(codes.ResourceExhausted, addr+": the queue ahead would make the job miss its deadline",
		errInfo(client.ReasonOverloaded), &errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
}

func refusedQueueFull(addr string) error {
	return detailed(codes.ResourceExhausted, addr+": queue full",
		errInfo(client.ReasonQueueFull), &errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
}

func refusedQuota(addr string) error {
	return detailed(codes.ResourceExhausted, addr+`: tenant "alice" is over its quota`, errInfo(client.ReasonTenantQuota),
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant:alice", Description: "concurrent jobs: 4 of 4"}}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
}

// refusedOverloadedQuota has the OVERLOADED reason but a QuotaFailure: a
// refusal about the caller, which another replica would refuse too.
func refusedOverloadedQuota(addr string) error {
	return detailed(codes.ResourceExhausted, addr+": over quota", errInfo(client.ReasonOverloaded),
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant:alice", Description: "worker-seconds"}}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
}

// loadRefusal is one report of client.OnLoadRefusal.
type loadRefusal struct {
	attempt int
	replica string
	err     error
}

// refusalLog collects OnLoadRefusal's reports.
type refusalLog struct {
	mu   sync.Mutex
	seen []loadRefusal
}

func (l *refusalLog) option() client.Option {
	return client.OnLoadRefusal(func(attempt int, replica string, err error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.seen = append(l.seen, loadRefusal{attempt, replica, err})
	})
}

// since returns the reports from index from on, and the index to pass next
// time.
func (l *refusalLog) since(from int) ([]loadRefusal, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]loadRefusal(nil), l.seen[from:]...), len(l.seen)
}

// callsOf returns the calls f received with prompt.
func callsOf(f *fakeServer, prompt string) []call {
	var out []call
	for _, c := range f.received() {
		if c.req.GetPrompt() == prompt {
			out = append(out, c)
		}
	}
	return out
}

// warmUp makes calls through c until every fake has received one, so that
// the client holds a ready connection to each.
func warmUp(t *testing.T, c *client.Client, fakes ...*fakeServer) {
	t.Helper()
	waitFor(t, 10*time.Second, "a call on every replica", func() bool {
		if _, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "warm up"}); err != nil {
			t.Fatalf("warm-up call: %v", err)
		}
		for _, f := range fakes {
			if len(callsOf(f, "warm up")) == 0 {
				return false
			}
		}
		return true
	})
}

// job runs one job through c, unary or streamed, and returns its response
// and, for a stream, the kinds of its events.
func job(t *testing.T, c *client.Client, stream bool, req *hourglassv1.GenerateRequest, timeout time.Duration) (*hourglassv1.GenerateResponse, []string, error) {
	t.Helper()
	ctx := ctxTimeout(t, timeout)
	if !stream {
		resp, err := c.Generate(ctx, req)
		return resp, nil, err
	}
	var kinds []string
	resp, err := c.GenerateWithProgress(ctx, req, func(ev *hourglassv1.GenerateEvent) {
		if ev.GetQueued() != nil {
			kinds = append(kinds, "queued")
		} else {
			kinds = append(kinds, "other")
		}
	})
	return resp, kinds, err
}

// sameStatus reports whether got is want as the replica sent it: code,
// message and details.
func sameStatus(got, want error) bool {
	g, w := status.Convert(got), status.Convert(want)
	return g.Code() == w.Code() && g.Message() == w.Message() && fmt.Sprint(g.Details()) == fmt.Sprint(w.Details())
}

// A replica that refuses a call for its own load (OVERLOADED, QUEUE_FULL)
// sends the call to the other replica at once, with the same seed; a
// refusal about the caller's quota is returned as it is.
func TestLoadRefusalMoves(t *testing.T) {
	tests := []struct {
		name     string
		refusal  func(addr string) error
		queued   bool // a stream is refused after a queued event
		wantMove bool
	}{
		{name: "OVERLOADED", refusal: refusedOverloaded, wantMove: true},
		{name: "QUEUE_FULL", refusal: refusedQueueFull, wantMove: true},
		{name: "QUEUE_FULL after a queued event", refusal: refusedQueueFull, queued: true, wantMove: true},
		{name: "tenant quota", refusal: refusedQuota},
		{name: "OVERLOADED with QuotaFailure", refusal: refusedOverloadedQuota},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tt.name, stream), func(t *testing.T) {
				busy, free := startFake(t, nil), startFake(t, nil)
				var log refusalLog
				c := newClient(t, busy.addr+","+free.addr, log.option())
				warmUp(t, c, busy, free)
				refusal := tt.refusal(busy.addr)
				busy.refuse(refusal, tt.queued)

				refusedFirst := 0
				for i := range 6 {
					prompt := fmt.Sprintf("call %d", i)
					_, mark := log.since(0)
					resp, kinds, err := job(t, c, stream, &hourglassv1.GenerateRequest{Prompt: prompt}, 10*time.Second)
					onBusy, onFree := callsOf(busy, prompt), callsOf(free, prompt)
					reports, _ := log.since(mark)
					if len(onBusy) == 0 {
						// The balancer picked the free replica first.
						if err != nil || len(onFree) != 1 {
							t.Fatalf("%s: %v after %d tries on the free replica; want OK after one", prompt, err, len(onFree))
						}
						continue
					}
					refusedFirst++
					if len(onBusy) != 1 {
						t.Fatalf("%s: the refusing replica got %d tries; want 1", prompt, len(onBusy))
					}
					if !tt.wantMove {
						if !sameStatus(err, refusal) || len(onFree) != 0 || len(reports) != 0 {
							t.Fatalf("%s: %v, %d tries on the other replica, %d reports; want the refusal as it is, no move, no report",
								prompt, err, len(onFree), len(reports))
						}
						continue
					}
					if err != nil {
						t.Fatalf("%s: %v; want OK on the other replica", prompt, err)
					}
					if len(onFree) != 1 {
						t.Fatalf("%s: the other replica got %d tries; want 1", prompt, len(onFree))
					}
					if a, b := onBusy[0].req, onFree[0].req; a.Seed == nil || a.GetSeed() != b.GetSeed() || resp.GetStats().GetSeed() != a.GetSeed() {
						t.Errorf("%s: seeds %d then %d, stats %d; want one seed", prompt, a.GetSeed(), b.GetSeed(), resp.GetStats().GetSeed())
					}
					// At once: the smallest retry backoff is 80 ms.
					if gap := onFree[0].at.Sub(onBusy[0].at); gap > 50*time.Millisecond {
						t.Errorf("%s: the move took %v; want it at once", prompt, gap)
					}
					if len(reports) != 1 || reports[0].attempt != 1 || reports[0].replica != busy.addr || !sameStatus(reports[0].err, refusal) {
						t.Errorf("%s: OnLoadRefusal reported %+v; want attempt 1 refused by %s", prompt, reports, busy.addr)
					}
					if stream {
						// The free replica sends two queued events before
						// the others; the refusing one, one before its
						// refusal when tt.queued.
						want := 2
						if tt.queued {
							want = 3
						}
						queued := 0
						for queued < len(kinds) && kinds[queued] == "queued" {
							queued++
						}
						if queued != want || len(kinds) != want+4 {
							t.Errorf("%s: events %v; want %d queued, then started, progress, image, done", prompt, kinds, want)
						}
					}
				}
				if refusedFirst == 0 {
					t.Fatal("no call's first try reached the refusing replica")
				}
			})
		}
	}
}

// When every replica the client may try refuses, the call ends with the
// last refusal as that replica sent it (its RetryInfo included), after one
// try on each, or WithMaxAttempts tries when that is fewer.
func TestLoadRefusalEveryReplica(t *testing.T) {
	tests := []struct {
		name      string
		replicas  int
		refusing  int // the first refusing of the replicas refuse
		opts      []client.Option
		wantTries int // in all; 0: any, the call succeeds
	}{
		{name: "single replica", replicas: 1, refusing: 1, wantTries: 1},
		{name: "every replica", replicas: 3, refusing: 3, wantTries: 3},
		{name: "two attempts", replicas: 3, refusing: 3, opts: []client.Option{client.WithMaxAttempts(2)}, wantTries: 2},
		{name: "one attempt", replicas: 2, refusing: 2, opts: []client.Option{client.WithMaxAttempts(1)}, wantTries: 1},
		{name: "two of three refuse", replicas: 3, refusing: 2},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tt.name, stream), func(t *testing.T) {
				fakes := make([]*fakeServer, tt.replicas)
				addrs := make([]string, tt.replicas)
				for i := range fakes {
					fakes[i] = startFake(t, nil)
					addrs[i] = fakes[i].addr
				}
				var log refusalLog
				c := newClient(t, strings.Join(addrs, ","), append(tt.opts, log.option())...)
				warmUp(t, c, fakes...)
				for i, f := range fakes[:tt.refusing] {
					if i%2 == 0 {
						f.refuse(refusedOverloaded(f.addr), false)
					} else {
						f.refuse(refusedQueueFull(f.addr), true)
					}
				}

				for i := range 3 {
					prompt := fmt.Sprintf("call %d", i)
					_, mark := log.since(0)
					resp, _, err := job(t, c, stream, &hourglassv1.GenerateRequest{Prompt: prompt}, 10*time.Second)
					var (
						tries  []call
						last   *fakeServer // the replica tried last
						lastAt time.Time
					)
					for _, f := range fakes {
						got := callsOf(f, prompt)
						if len(got) > 1 {
							t.Fatalf("%s: replica %s got %d tries; want at most one", prompt, f.addr, len(got))
						}
						if len(got) == 1 && got[0].at.After(lastAt) {
							last, lastAt = f, got[0].at
						}
						tries = append(tries, got...)
					}
					for _, c := range tries[1:] {
						if c.req.GetSeed() != tries[0].req.GetSeed() {
							t.Errorf("%s: tries with seeds %d and %d; want one", prompt, tries[0].req.GetSeed(), c.req.GetSeed())
						}
					}
					reports, _ := log.since(mark)
					if tt.wantTries == 0 {
						if err != nil || resp.GetStats().GetSeed() != tries[0].req.GetSeed() {
							t.Fatalf("%s: %v; want OK on the replica that does not refuse", prompt, err)
						}
						if len(reports) != len(tries)-1 {
							t.Errorf("%s: %d refusals reported for %d tries", prompt, len(reports), len(tries))
						}
						continue
					}
					if len(tries) != tt.wantTries {
						t.Fatalf("%s: %d tries; want %d", prompt, len(tries), tt.wantTries)
					}
					want, _ := last.refusing()
					if !sameStatus(err, want) {
						t.Fatalf("%s: %v; want the last refusal, %v", prompt, err, want)
					}
					if _, ok := client.IsOverloaded(err); !ok || !client.IsRetryable(err) {
						t.Errorf("%s: %v is not overload with a delay", prompt, err)
					}
					if len(reports) != tt.wantTries || reports[len(reports)-1].replica != last.addr {
						t.Errorf("%s: OnLoadRefusal reported %+v; want %d reports, the last from %s", prompt, reports, tt.wantTries, last.addr)
					}
				}
			})
		}
	}
}

// A move shares the call's deadline: the other replica gets what is left
// of it, and the call ends at the deadline.
func TestLoadRefusalDeadline(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			busy, slow := startFake(t, nil), startFake(t, nil)
			c := newClient(t, busy.addr+","+slow.addr)
			warmUp(t, c, busy, slow)
			busy.refuse(refusedOverloaded(busy.addr), false)
			const timeout = 300 * time.Millisecond
			for range 4 {
				before := len(busy.received())
				start := time.Now()
				// The other replica answers a "wait" job at its deadline.
				_, _, err := job(t, c, stream, &hourglassv1.GenerateRequest{Prompt: promptWait}, timeout)
				took := time.Since(start)
				if !client.IsDeadlineExceeded(err) {
					t.Fatalf("%v; want DEADLINE_EXCEEDED", err)
				}
				if took > timeout+250*time.Millisecond {
					t.Errorf("returned after %v; want at the %v deadline", took, timeout)
				}
				refused := busy.received()[before:]
				if len(refused) == 0 {
					continue // the slow replica was picked first
				}
				moved := slow.received()
				to := moved[len(moved)-1]
				if to.req.GetSeed() != refused[0].req.GetSeed() {
					t.Errorf("moved with seed %d; want %d", to.req.GetSeed(), refused[0].req.GetSeed())
				}
				if to.remaining > refused[0].remaining || to.remaining > timeout {
					t.Errorf("the other replica saw %v left, the refusing one %v; want what was left of the %v", to.remaining, refused[0].remaining, timeout)
				}
				return
			}
			t.Fatal("no call's first try reached the refusing replica in 4 calls")
		})
	}
}

// Under a balancing policy the client does not steer (here grpc-go's own
// round_robin, as xDS or a resolver's service config would give), a
// refused call still moves, to wherever that policy picks, and stops
// when a replica refuses it a second time.
func TestLoadRefusalOtherPolicy(t *testing.T) {
	a, b := startFake(t, nil), startFake(t, nil)
	c := newClient(t, a.addr+","+b.addr, client.WithMaxAttempts(5),
		client.WithGRPCDialOptions(grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`)))
	warmUp(t, c, a, b)
	a.refuse(refusedOverloaded(a.addr), false)
	for i := range 4 {
		prompt := fmt.Sprintf("one refuses %d", i)
		if _, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: prompt}); err != nil {
			t.Fatalf("%s: %v; want OK on the replica that does not refuse", prompt, err)
		}
		if n := len(callsOf(b, prompt)); n != 1 {
			t.Fatalf("%s: %d tries on the replica that does not refuse; want 1", prompt, n)
		}
	}
	b.refuse(refusedQueueFull(b.addr), false)
	prompt := "both refuse"
	_, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: prompt})
	onA, onB := callsOf(a, prompt), callsOf(b, prompt)
	// round_robin alternates: X, Y, then X again, which ends the call.
	first, again := a, onA
	if len(onB) > len(onA) {
		first, again = b, onB
	}
	want, _ := first.refusing()
	if len(onA)+len(onB) != 3 || len(again) != 2 || !sameStatus(err, want) {
		t.Errorf("%v after %d tries on A, %d on B; want 3 tries and the refusal of the replica tried twice", err, len(onA), len(onB))
	}
}
