package executor

import "time"

// clock is the time supervision runs on: the cancel grace, the idle poll,
// the heartbeat, the crash-loop window and the restart backoffs. The real
// one is the time package; the supervision tests use a virtual clock that
// they advance by hand, so that "killed exactly when the grace expires"
// and "held back 1 s, then 2 s" are asserted without waiting for them.
// (A job's own deadline is its caller's context and stays on real time.)
type clock interface {
	Now() time.Time
	// NewTimer fires once on C after d.
	NewTimer(d time.Duration) clockTimer
	// AfterFunc calls f on its own goroutine after d.
	AfterFunc(d time.Duration, f func()) clockTimer
}

// clockTimer is the part of *time.Timer that supervision uses.
type clockTimer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// realClock is the time package.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) clockTimer { return realTimer{time.NewTimer(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) clockTimer {
	return realTimer{time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }
