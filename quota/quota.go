// Package quota bounds what one tenant may use of the worker pool, so that
// one tenant flooding hourglassd cannot starve the others. It is the answer
// to the seed's "many requests just under the timeout" attack: each such
// request is cheap to send and expensive to run, so the expensive part, the
// worker time, is what a tenant is billed for.
//
// Two limits, each off when its setting is zero:
//   - concurrent jobs: how many jobs one tenant may have queued or running;
//   - worker-seconds: a token bucket per tenant, refilled at Rate
//     worker-seconds per second up to Burst. A job is charged its admission
//     estimate when it is admitted and settled by its real run time when it
//     ends, so a tenant whose estimates are low pays the difference, and
//     one whose job was refused or cancelled before it ran gets it all back.
//
// The accounting knows nothing of gRPC: it returns *Error, which the server
// maps to RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo.
package quota

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Limit names the limit a refused job ran into. The values are stable:
// metrics label throttles with them.
type Limit string

const (
	// LimitConcurrent: the tenant already has MaxConcurrent jobs queued or
	// running.
	LimitConcurrent Limit = "concurrent_jobs"
	// LimitWorkerTime: the tenant's worker-seconds bucket cannot cover the
	// job.
	LimitWorkerTime Limit = "worker_seconds"
)

// Description is the limit in words, as QuotaFailure descriptions start.
func (l Limit) Description() string {
	switch l {
	case LimitConcurrent:
		return "concurrent jobs"
	case LimitWorkerTime:
		return "worker-seconds"
	}
	return string(l)
}

// Error is a refusal: which tenant, which limit, and when a retry may
// succeed.
type Error struct {
	Tenant string
	Limit  Limit
	// RetryAfter is when the same job may be admitted, all else equal:
	// the time the bucket needs to refill the shortfall, or for
	// concurrency the time until the tenant's earliest job is expected
	// to end.
	RetryAfter time.Duration
	// Msg starts with the limit's description and is safe to show to the
	// caller.
	Msg string
}

func (e *Error) Error() string { return fmt.Sprintf("tenant %q: %s", e.Tenant, e.Msg) }

// Config sets the limits. Zero values mean no limit.
type Config struct {
	// MaxConcurrent is the most jobs one tenant may have queued or running.
	MaxConcurrent int
	// Rate refills each tenant's bucket, in worker-seconds per second: 1.0
	// lets a tenant keep one worker busy all the time.
	Rate float64
	// Burst is the bucket's capacity in worker-seconds: what a tenant may
	// use at once after being idle. Required when Rate is set.
	Burst float64
	// Now is the clock (default time.Now); tests inject a fake one.
	Now func() time.Time
	// OnThrottle, if set, is called once for every refusal, outside the
	// limiter's lock, from the refused caller's goroutine; a metrics
	// counter of throttles per tenant and limit hangs here. It must be
	// safe for concurrent use.
	OnThrottle func(tenant string, limit Limit)
}

// concurrencyRetryFallback is the retry hint of a concurrency refusal when
// none of the tenant's jobs has an estimate yet.
const concurrencyRetryFallback = time.Second

// minRetry keeps RetryInfo meaningful: a zero delay reads as "at once",
// which a bucket at exactly zero is not.
const minRetry = time.Millisecond

// Limiter holds every tenant's usage. Safe for concurrent use.
type Limiter struct {
	cfg        Config
	sweepEvery time.Duration

	mu        sync.Mutex
	tenants   map[string]*tenantState
	lastSweep time.Time
}

// tenantState is one tenant's usage. A tenant with no job in flight and a
// full bucket is indistinguishable from one never seen, so it is dropped:
// the map holds only tenants that have jobs or debt, and does not grow
// with tenants that stopped calling.
type tenantState struct {
	tickets map[*Ticket]struct{} // in flight: Begin called, End not yet
	tokens  float64              // worker-seconds; negative is debt
	last    time.Time            // when tokens was last refilled
}

// New checks cfg and returns a Limiter.
func New(cfg Config) (*Limiter, error) {
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case cfg.MaxConcurrent < 0:
		return nil, fmt.Errorf("quota: max concurrent jobs %d must not be negative", cfg.MaxConcurrent)
	case !finite(cfg.Rate) || cfg.Rate < 0:
		return nil, fmt.Errorf("quota: worker-seconds per second %v must be a finite number >= 0", cfg.Rate)
	case !finite(cfg.Burst) || cfg.Burst < 0:
		return nil, fmt.Errorf("quota: burst worker-seconds %v must be a finite number >= 0", cfg.Burst)
	case cfg.Rate > 0 && cfg.Burst == 0:
		return nil, errors.New("quota: a worker-seconds rate needs a burst: a bucket that holds nothing admits nothing")
	case cfg.Rate == 0 && cfg.Burst > 0:
		return nil, errors.New("quota: a worker-seconds burst needs a rate: a bucket that never refills is a lifetime limit")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{cfg: cfg, tenants: map[string]*tenantState{}, sweepEvery: time.Minute}
	if cfg.Rate > 0 {
		// Sweep about as often as an emptied bucket takes to refill, so
		// an idle tenant's state lives at most about twice that.
		l.sweepEvery = max(time.Second, min(10*time.Minute, seconds(cfg.Burst/cfg.Rate)))
	}
	l.lastSweep = cfg.Now()
	return l, nil
}

// metered reports whether the worker-seconds bucket is on.
func (l *Limiter) metered() bool { return l.cfg.Rate > 0 }

// Ticket is one job's claim on its tenant's limits, from Begin to End.
// Its methods are safe for concurrent use.
type Ticket struct {
	l      *Limiter
	tenant string
	st     *tenantState

	// guarded by l.mu
	charged     time.Duration // worker time taken from the bucket so far
	expectedEnd time.Time     // charge time + estimate; zero before Charge
	ended       bool
}

// Tenant is the tenant the ticket bills.
func (t *Ticket) Tenant() string { return t.tenant }

// Begin admits one more job for tenant, or refuses it: when the tenant has
// MaxConcurrent jobs in flight, or when its bucket is empty or in debt.
// The returned error is an *Error. The caller must End the ticket.
func (l *Limiter) Begin(tenant string) (*Ticket, error) {
	t, err := l.begin(tenant)
	if err != nil {
		l.throttled(err)
		return nil, err
	}
	return t, nil
}

func (l *Limiter) begin(tenant string) (*Ticket, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	l.sweepLocked(now)
	st := l.tenants[tenant]
	if st == nil {
		st = &tenantState{tickets: map[*Ticket]struct{}{}, tokens: l.cfg.Burst, last: now}
		l.tenants[tenant] = st
	}
	if limit := l.cfg.MaxConcurrent; limit > 0 && len(st.tickets) >= limit {
		return nil, &Error{Tenant: tenant, Limit: LimitConcurrent, RetryAfter: st.earliestEnd(now),
			Msg: fmt.Sprintf("concurrent jobs: %d of %d queued or running", len(st.tickets), limit)}
	}
	if l.metered() {
		l.refillLocked(st, now)
		if st.tokens <= 0 {
			return nil, &Error{Tenant: tenant, Limit: LimitWorkerTime, RetryAfter: l.refillTime(-st.tokens),
				Msg: fmt.Sprintf("worker-seconds: budget used up (%.1f owed); it refills at %g per second",
					-st.tokens, l.cfg.Rate)}
		}
	}
	t := &Ticket{l: l, tenant: tenant, st: st}
	st.tickets[t] = struct{}{}
	return t, nil
}

// Charge takes the job's admission estimate from the tenant's bucket. It
// refuses, with an *Error, when the bucket holds less than the estimate; a
// job larger than the whole burst is admitted once the bucket is full and
// leaves it in debt, since waiting longer would never help it. Charge may
// be called again (a retry on another estimate); the charges add up.
func (t *Ticket) Charge(estimate time.Duration) error {
	err := t.charge(max(0, estimate))
	if err != nil {
		t.l.throttled(err)
	}
	return err
}

func (t *Ticket) charge(estimate time.Duration) error {
	l := t.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.ended {
		return nil
	}
	now := l.cfg.Now()
	t.expectedEnd = now.Add(estimate)
	if !l.metered() {
		return nil
	}
	l.refillLocked(t.st, now)
	need := min(estimate.Seconds(), l.cfg.Burst)
	if t.st.tokens < need {
		short := need - t.st.tokens
		return &Error{Tenant: t.tenant, Limit: LimitWorkerTime, RetryAfter: l.refillTime(short),
			Msg: fmt.Sprintf("worker-seconds: the job needs about %.1f, the budget holds %.1f; it refills at %g per second",
				estimate.Seconds(), max(0, t.st.tokens), l.cfg.Rate)}
	}
	t.st.tokens -= estimate.Seconds()
	t.charged += estimate
	return nil
}

// Settle replaces what the ticket was charged by the worker time the job
// really used: the difference is refunded, or charged on top. actual is 0
// for a job refused or cancelled before it ran, the Result's run time for
// one that finished, and the time it ran for one cut at its deadline.
// Settling again corrects the previous settlement. After End, Settle does
// nothing: call it first.
func (t *Ticket) Settle(actual time.Duration) {
	l := t.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.ended {
		return
	}
	actual = max(0, actual)
	if l.metered() {
		l.refillLocked(t.st, l.cfg.Now())
		t.st.tokens = min(l.cfg.Burst, t.st.tokens+(t.charged-actual).Seconds())
	}
	t.charged = actual
}

// End releases the ticket's place among its tenant's concurrent jobs. What
// was charged stays charged: a ticket ended without Settle pays its
// estimate. End is idempotent.
func (t *Ticket) End() {
	l := t.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.ended {
		return
	}
	t.ended = true
	delete(t.st.tickets, t)
	if len(t.st.tickets) == 0 {
		now := l.cfg.Now()
		if l.metered() {
			l.refillLocked(t.st, now)
		}
		l.dropIfIdleLocked(t.tenant, t.st)
	}
}

// Tenants is the number of tenants whose state the limiter holds: those
// with jobs in flight or a bucket not yet full again.
func (l *Limiter) Tenants() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(l.cfg.Now())
	return len(l.tenants)
}

func (l *Limiter) throttled(err error) {
	var qe *Error
	if l.cfg.OnThrottle != nil && errors.As(err, &qe) {
		l.cfg.OnThrottle(qe.Tenant, qe.Limit)
	}
}

// refillLocked adds what the bucket earned since it was last refilled. A
// clock that steps back earns nothing and does not move last back.
func (l *Limiter) refillLocked(st *tenantState, now time.Time) {
	if d := now.Sub(st.last); d > 0 {
		st.tokens = min(l.cfg.Burst, st.tokens+d.Seconds()*l.cfg.Rate)
		st.last = now
	}
}

// refillTime is how long the bucket takes to earn short worker-seconds,
// rounded up to the millisecond.
func (l *Limiter) refillTime(short float64) time.Duration {
	ms := math.Ceil(short / l.cfg.Rate * 1e3)
	return max(minRetry, time.Duration(ms)*time.Millisecond)
}

// earliestEnd is the retry hint of a concurrency refusal: when the first
// of the tenant's charged jobs is expected to end.
func (st *tenantState) earliestEnd(now time.Time) time.Duration {
	var first time.Time
	for t := range st.tickets {
		if !t.expectedEnd.IsZero() && (first.IsZero() || t.expectedEnd.Before(first)) {
			first = t.expectedEnd
		}
	}
	if first.IsZero() {
		return concurrencyRetryFallback
	}
	// A job past its estimate may end any moment; 100 ms keeps a crowd
	// of refused callers from retrying in a tight loop.
	return max(100*time.Millisecond, first.Sub(now))
}

func (l *Limiter) dropIfIdleLocked(tenant string, st *tenantState) {
	if len(st.tickets) == 0 && (!l.metered() || st.tokens >= l.cfg.Burst) {
		delete(l.tenants, tenant)
	}
}

// sweepLocked drops the idle tenants whose buckets refilled, at most once
// every sweepEvery, so its cost is spread over many calls.
func (l *Limiter) sweepLocked(now time.Time) {
	if now.Sub(l.lastSweep) < l.sweepEvery {
		return
	}
	l.lastSweep = now
	for name, st := range l.tenants {
		if len(st.tickets) > 0 {
			continue
		}
		if l.metered() {
			l.refillLocked(st, now)
		}
		l.dropIfIdleLocked(name, st)
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
