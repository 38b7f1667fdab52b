package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// deadlineCase is one call to the policy. The caller's deadline is given
// relative to the call; the wanted one is either exactly the caller's
// (keep) or now+want, where now is somewhere during the call.
type deadlineCase struct {
	name    string
	policy  deadlinePolicy
	caller  time.Duration // 0: the call has no deadline
	keep    bool
	want    time.Duration
	cancels bool // apply made a new context; its cancel must end it
}

var deadlineCases = []deadlineCase{
	{name: "no deadline gets the default", policy: deadlinePolicy{def: time.Minute, max: 10 * time.Minute},
		want: time.Minute, cancels: true},
	{name: "shorter than max is kept", policy: deadlinePolicy{def: time.Minute, max: 10 * time.Minute},
		caller: 5 * time.Second, keep: true},
	{name: "longer than default, shorter than max, is kept", policy: deadlinePolicy{def: time.Minute, max: 10 * time.Minute},
		caller: 5 * time.Minute, keep: true},
	{name: "already passed is kept", policy: deadlinePolicy{def: time.Minute, max: 10 * time.Minute},
		caller: -time.Second, keep: true},
	{name: "beyond max is cut to max", policy: deadlinePolicy{def: time.Minute, max: 10 * time.Minute},
		caller: time.Hour, want: 10 * time.Minute, cancels: true},
	{name: "default beyond max is capped", policy: deadlinePolicy{def: time.Hour, max: 10 * time.Minute},
		want: 10 * time.Minute, cancels: true},
}

// parent returns the caller's context for c.
func (c deadlineCase) parent(t *testing.T) (context.Context, time.Time) {
	t.Helper()
	if c.caller == 0 {
		return context.Background(), time.Time{}
	}
	d := time.Now().Add(c.caller)
	ctx, cancel := context.WithDeadline(context.Background(), d)
	t.Cleanup(cancel)
	return ctx, d
}

// check reports whether got is the deadline c wants for a call made between
// before and after.
func (c deadlineCase) check(t *testing.T, call string, callerDeadline, before, after time.Time, got time.Time, ok bool) {
	t.Helper()
	switch {
	case !ok:
		t.Errorf("%s (caller %v) has no deadline; want one", call, c.caller)
	case c.keep && !got.Equal(callerDeadline):
		t.Errorf("%s (caller %v) deadline = %v; want the caller's %v unchanged", call, c.caller, got, callerDeadline)
	case !c.keep && (got.Before(before.Add(c.want)) || got.After(after.Add(c.want))):
		t.Errorf("%s (caller %v) deadline = now+%v; want now+%v", call, c.caller, got.Sub(before), c.want)
	}
}

func TestDeadlinePolicyApply(t *testing.T) {
	for _, tt := range deadlineCases {
		t.Run(tt.name, func(t *testing.T) {
			parent, callerDeadline := tt.parent(t)
			before := time.Now()
			ctx, cancel := tt.policy.apply(parent)
			after := time.Now()
			d, ok := ctx.Deadline()
			tt.check(t, "apply", callerDeadline, before, after, d, ok)
			if tt.keep && ctx != parent {
				t.Errorf("apply(caller %v) made a new context; want the caller's, which already has a good deadline", tt.caller)
			}
			if cancel == nil {
				t.Fatalf("apply(caller %v) cancel = nil; want a func", tt.caller)
			}
			cancel()
			if tt.cancels {
				if err := ctx.Err(); !errors.Is(err, context.Canceled) {
					t.Errorf("apply(caller %v): after cancel ctx.Err() = %v; want context.Canceled", tt.caller, err)
				}
				if parent.Err() != nil {
					t.Errorf("apply(caller %v): cancel ended the caller's context: %v", tt.caller, parent.Err())
				}
			}
		})
	}
}

func TestDeadlinePolicyUnary(t *testing.T) {
	wantErr := errors.New("handler error")
	for _, tt := range deadlineCases {
		t.Run(tt.name, func(t *testing.T) {
			parent, callerDeadline := tt.parent(t)
			var handlerCtx context.Context
			before := time.Now()
			resp, err := tt.policy.unary(parent, "req", &grpc.UnaryServerInfo{FullMethod: "/hourglass.v1.GenerateService/Generate"},
				func(ctx context.Context, req any) (any, error) {
					handlerCtx = ctx
					if req != "req" {
						t.Errorf("handler got request %v; want %q", req, "req")
					}
					return "resp", wantErr
				})
			after := time.Now()
			if resp != "resp" || err != wantErr {
				t.Errorf("unary() = %v, %v; want the handler's %q, %v", resp, err, "resp", wantErr)
			}
			if handlerCtx == nil {
				t.Fatalf("unary() did not call the handler")
			}
			d, ok := handlerCtx.Deadline()
			tt.check(t, "unary handler ctx", callerDeadline, before, after, d, ok)
			if tt.cancels && handlerCtx.Err() == nil {
				t.Errorf("unary(caller %v): handler context still live after return; want it cancelled (timer released)", tt.caller)
			}
		})
	}
}

// fakeStream is a grpc.ServerStream whose only working method is Context.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func TestDeadlinePolicyStream(t *testing.T) {
	wantErr := errors.New("handler error")
	for _, tt := range deadlineCases {
		t.Run(tt.name, func(t *testing.T) {
			parent, callerDeadline := tt.parent(t)
			ss := &fakeStream{ctx: parent}
			var handlerCtx context.Context
			before := time.Now()
			err := tt.policy.stream("srv", ss, &grpc.StreamServerInfo{FullMethod: "/hourglass.v1.GenerateService/GenerateStream", IsServerStream: true},
				func(srv any, stream grpc.ServerStream) error {
					if srv != "srv" {
						t.Errorf("handler got srv %v; want %q", srv, "srv")
					}
					handlerCtx = stream.Context()
					return wantErr
				})
			after := time.Now()
			if err != wantErr {
				t.Errorf("stream() = %v; want the handler's %v", err, wantErr)
			}
			if handlerCtx == nil {
				t.Fatalf("stream() did not call the handler")
			}
			d, ok := handlerCtx.Deadline()
			tt.check(t, "stream handler's stream.Context()", callerDeadline, before, after, d, ok)
			if tt.cancels && handlerCtx.Err() == nil {
				t.Errorf("stream(caller %v): handler context still live after return; want it cancelled (timer released)", tt.caller)
			}
		})
	}
}
