package quota

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// available is what tenant's bucket holds now, refilled; Burst for a
// tenant the limiter does not hold.
func (l *Limiter) available(tenant string) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.tenants[tenant]
	if st == nil {
		return l.cfg.Burst
	}
	l.refillLocked(st, l.cfg.Now())
	return st.tokens
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string // "" means valid
	}{
		{Config{}, ""},
		{Config{MaxConcurrent: 4}, ""},
		{Config{Rate: 0.5, Burst: 30}, ""},
		{Config{MaxConcurrent: -1}, "must not be negative"},
		{Config{Rate: -1, Burst: 1}, "finite number >= 0"},
		{Config{Rate: math.NaN(), Burst: 1}, "finite number >= 0"},
		{Config{Rate: 1, Burst: math.Inf(1)}, "finite number >= 0"},
		{Config{Rate: 1}, "needs a burst"},
		{Config{Burst: 10}, "needs a rate"},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("New(%+v) = %v; want no error", tt.cfg, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("New(%+v) = %v; want an error containing %q", tt.cfg, err, tt.want)
		}
	}
}

// step is one thing that happens to a limiter in a scenario.
type step struct {
	advance time.Duration // first move the clock by this much
	op      string        // begin, charge, settle, end, tokens, tenants
	tenant  string        // begin, tokens
	ticket  int           // charge, settle, end: the ticket of the n-th begin (0-based)
	d       time.Duration // charge: estimate; settle: actual
	// What the op should give: for begin and charge, the refusal (""
	// means admitted) and its retry delay; for tokens, the bucket; for
	// tenants, the count.
	refused Limit
	retry   time.Duration
	tokens  float64
	count   int
}

func TestScenarios(t *testing.T) {
	s := time.Second
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{name: "concurrency limit and release", cfg: Config{MaxConcurrent: 2}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "begin", tenant: "a"},
			{op: "begin", tenant: "a", refused: LimitConcurrent, retry: concurrencyRetryFallback},
			{op: "begin", tenant: "b"}, // another tenant is not affected
			{op: "end", ticket: 0},
			{op: "end", ticket: 0}, // idempotent: frees one place, not two
			{op: "begin", tenant: "a"},
			{op: "begin", tenant: "a", refused: LimitConcurrent, retry: concurrencyRetryFallback},
		}},
		{name: "concurrency retry is the earliest expected end", cfg: Config{MaxConcurrent: 2}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 5 * s},
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 1, d: 3 * s},
			{advance: s, op: "begin", tenant: "a", refused: LimitConcurrent, retry: 2 * s},
			{advance: 10 * s, op: "begin", tenant: "a", refused: LimitConcurrent, retry: 100 * time.Millisecond},
		}},
		{name: "bucket starts full and refills up to burst", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "tokens", tenant: "a", tokens: 10},
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 10 * s},
			{op: "tokens", tenant: "a", tokens: 0},
			{op: "begin", tenant: "a", refused: LimitWorkerTime, retry: time.Millisecond},
			{advance: 4 * s, op: "tokens", tenant: "a", tokens: 4},
			{advance: 60 * s, op: "tokens", tenant: "a", tokens: 10},
		}},
		{name: "refused charge: retry is the time to refill the shortfall", cfg: Config{Rate: 0.5, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 8 * s},
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 1, d: 5 * s, refused: LimitWorkerTime, retry: 6 * s}, // 3 short at 0.5/s
			{op: "tokens", tenant: "a", tokens: 2},                                      // a refused charge takes nothing
			{advance: 6 * s, op: "charge", ticket: 1, d: 5 * s},
			{op: "tokens", tenant: "a", tokens: 0},
		}},
		{name: "retry rounds up to the millisecond", cfg: Config{Rate: 3, Burst: 1}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: s},
			{op: "begin", tenant: "a", refused: LimitWorkerTime, retry: time.Millisecond},
			{op: "settle", ticket: 0, d: 2 * s}, // one worker-second of debt
			{op: "begin", tenant: "a", refused: LimitWorkerTime, retry: 334 * time.Millisecond},
		}},
		{name: "settle refunds an overestimate", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 8 * s},
			{op: "tokens", tenant: "a", tokens: 2},
			{op: "settle", ticket: 0, d: 3 * s},
			{op: "tokens", tenant: "a", tokens: 7},
			{op: "settle", ticket: 0, d: 4 * s}, // a second settlement corrects the first
			{op: "tokens", tenant: "a", tokens: 6},
		}},
		{name: "settle charges an underestimate, into debt", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 8 * s},
			{op: "settle", ticket: 0, d: 14 * s},
			{op: "tokens", tenant: "a", tokens: -4},
			{op: "end", ticket: 0},
			{op: "begin", tenant: "a", refused: LimitWorkerTime, retry: 4 * s},
			{advance: 4*s + time.Millisecond, op: "begin", tenant: "a"},
		}},
		{name: "refund never exceeds burst", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 8 * s},
			{advance: 30 * s, op: "settle", ticket: 0, d: 0},
			{op: "tokens", tenant: "a", tokens: 10},
		}},
		{name: "job refused before running gets all back", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 6 * s},
			{op: "settle", ticket: 0, d: 0},
			{op: "end", ticket: 0},
			{op: "tokens", tenant: "a", tokens: 10},
			{op: "tenants", count: 0},
		}},
		{name: "end without settle pays the estimate", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: 6 * s},
			{op: "end", ticket: 0},
			{op: "settle", ticket: 0, d: 0}, // after End: ignored
			{op: "tokens", tenant: "a", tokens: 4},
		}},
		{name: "a job larger than the burst waits for a full bucket", cfg: Config{Rate: 1, Burst: 10}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: s},
			{op: "charge", ticket: 0, d: 25 * s, refused: LimitWorkerTime, retry: s},
			{advance: s, op: "charge", ticket: 0, d: 25 * s},
			{op: "tokens", tenant: "a", tokens: -15},
		}},
		{name: "zero config limits nothing", cfg: Config{}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 0, d: time.Hour},
			{op: "begin", tenant: "a"},
			{op: "charge", ticket: 1, d: time.Hour},
			{op: "tenants", count: 1},
			{op: "end", ticket: 0},
			{op: "end", ticket: 1},
			{op: "tenants", count: 0},
		}},
		{name: "idle tenants are dropped once refilled", cfg: Config{Rate: 1, Burst: 2}, steps: []step{
			{op: "begin", tenant: "a"},
			{op: "begin", tenant: "b"},
			{op: "charge", ticket: 0, d: 2 * s},
			{op: "end", ticket: 0},
			{op: "end", ticket: 1}, // b used nothing: dropped at once
			{op: "tenants", count: 1},
			{advance: s, op: "tenants", count: 1},
			{advance: s, op: "tenants", count: 0}, // a refilled; the sweep is due
			{op: "tokens", tenant: "a", tokens: 2},
		}},
		{name: "a tenant with a job in flight is kept", cfg: Config{Rate: 1, Burst: 2}, steps: []step{
			{op: "begin", tenant: "a"},
			{advance: time.Hour, op: "tenants", count: 1},
			{op: "end", ticket: 0},
			{op: "tenants", count: 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			tt.cfg.Now = clock.Now
			l, err := New(tt.cfg)
			if err != nil {
				t.Fatalf("New(%+v) = %v", tt.cfg, err)
			}
			var tickets []*Ticket
			for i, st := range tt.steps {
				clock.Advance(st.advance)
				where := fmt.Sprintf("step %d (%s)", i, st.op)
				switch st.op {
				case "begin":
					tk, err := l.Begin(st.tenant)
					checkRefusal(t, where, fmt.Sprintf("Begin(%q)", st.tenant), err, st)
					if err == nil {
						tickets = append(tickets, tk)
					}
				case "charge":
					err := tickets[st.ticket].Charge(st.d)
					checkRefusal(t, where, fmt.Sprintf("ticket[%d].Charge(%v)", st.ticket, st.d), err, st)
				case "settle":
					tickets[st.ticket].Settle(st.d)
				case "end":
					tickets[st.ticket].End()
				case "tokens":
					if got := l.available(st.tenant); math.Abs(got-st.tokens) > 1e-9 {
						t.Errorf("%s: bucket of %q = %v; want %v", where, st.tenant, got, st.tokens)
					}
				case "tenants":
					if got := l.Tenants(); got != st.count {
						t.Errorf("%s: Tenants() = %d; want %d", where, got, st.count)
					}
				default:
					t.Fatalf("%s: unknown op", where)
				}
			}
		})
	}
}

func checkRefusal(t *testing.T, where, call string, err error, st step) {
	t.Helper()
	if st.refused == "" {
		if err != nil {
			t.Errorf("%s: %s = %v; want admitted", where, call, err)
		}
		return
	}
	var qe *Error
	if !errors.As(err, &qe) {
		t.Errorf("%s: %s = %v; want a %s refusal", where, call, err, st.refused)
		return
	}
	if qe.Limit != st.refused || qe.RetryAfter != st.retry {
		t.Errorf("%s: %s = refused by %s, retry %v; want %s, retry %v", where, call, qe.Limit, qe.RetryAfter, st.refused, st.retry)
	}
	if !strings.Contains(qe.Msg, qe.Limit.Description()) {
		t.Errorf("%s: %s message %q does not name the limit %q", where, call, qe.Msg, qe.Limit.Description())
	}
}

func TestOnThrottle(t *testing.T) {
	type key struct {
		tenant string
		limit  Limit
	}
	counts := map[key]int{}
	clock := newFakeClock()
	l, err := New(Config{MaxConcurrent: 1, Rate: 1, Burst: 5, Now: clock.Now,
		OnThrottle: func(tenant string, limit Limit) { counts[key{tenant, limit}]++ }})
	if err != nil {
		t.Fatal(err)
	}
	tk, _ := l.Begin("a")
	_, _ = l.Begin("a")            // concurrency
	_ = tk.Charge(6 * time.Second) // larger than the burst, bucket full: admitted
	tk.End()
	_, _ = l.Begin("a") // in debt
	tb, _ := l.Begin("b")
	_ = tb.Charge(2 * time.Second)
	_ = tb.Charge(4 * time.Second) // bucket holds 3
	tb.End()
	want := map[key]int{{"a", LimitConcurrent}: 1, {"a", LimitWorkerTime}: 1, {"b", LimitWorkerTime}: 1}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("throttles = %v; want %v", counts, want)
	}
}

// TestConcurrentUse hammers one limiter from many goroutines; run with
// -race. The concurrency limit must hold at every moment, every refusal
// must reach OnThrottle, and once all is quiet and refilled, no tenant
// state may remain.
func TestConcurrentUse(t *testing.T) {
	const (
		tenants    = 5
		goroutines = 40
		iterations = 300
		maxConc    = 3
	)
	clock := newFakeClock()
	var throttles atomic.Int64
	l, err := New(Config{MaxConcurrent: maxConc, Rate: 100, Burst: 1, Now: clock.Now,
		OnThrottle: func(string, Limit) { throttles.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	var inFlight [tenants]atomic.Int32
	var refusals atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range iterations {
				n := (g + i) % tenants
				tk, err := l.Begin(fmt.Sprintf("tenant-%d", n))
				if err != nil {
					refusals.Add(1)
					continue
				}
				if c := inFlight[n].Add(1); c > maxConc {
					t.Errorf("tenant-%d has %d jobs in flight; limit %d", n, c, maxConc)
				}
				if err := tk.Charge(time.Duration(i%7) * time.Millisecond); err != nil {
					refusals.Add(1)
					tk.Settle(0)
				} else {
					clock.Advance(time.Millisecond)
					tk.Settle(time.Duration(i%5) * time.Millisecond)
				}
				inFlight[n].Add(-1)
				tk.End()
				tk.End()
			}
		}()
	}
	wg.Wait()
	if got, want := throttles.Load(), refusals.Load(); got != want {
		t.Errorf("OnThrottle called %d times; want one per refusal, %d", got, want)
	}
	clock.Advance(time.Hour)
	if n := l.Tenants(); n != 0 {
		t.Errorf("Tenants() after an idle hour = %d; want 0", n)
	}
}
