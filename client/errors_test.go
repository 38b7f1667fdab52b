package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// The helpers read the statuses as they arrive over the wire.
func TestErrorHelpers(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	tests := []struct {
		prompt         string
		code           codes.Code
		reason         string
		overloaded     time.Duration // -1: not overloaded
		retryable      bool
		deadline       bool
		violations     []string
		quotaSubjects  []string
		metadataStepsN string
	}{
		{prompt: promptOverloaded, code: codes.ResourceExhausted, reason: client.ReasonOverloaded, overloaded: 2 * time.Second, retryable: true, metadataStepsN: "1"},
		{prompt: promptQuota, code: codes.ResourceExhausted, reason: client.ReasonTenantQuota, overloaded: 1500 * time.Millisecond, retryable: true, quotaSubjects: []string{"tenant:alice"}, metadataStepsN: "1"},
		{prompt: promptOOM, code: codes.ResourceExhausted, reason: client.ReasonOutOfMemory, overloaded: -1, metadataStepsN: "1"},
		{prompt: promptInvalid, code: codes.InvalidArgument, overloaded: -1, violations: []string{"width: must be a multiple of 8", "image_count: must be at most 32"}},
		{prompt: promptTooShort, code: codes.DeadlineExceeded, reason: client.ReasonDeadlineTooShort, overloaded: -1, deadline: true, metadataStepsN: "1"},
		{prompt: promptAlwaysDown, code: codes.Unavailable, reason: client.ReasonDraining, overloaded: -1, retryable: true, metadataStepsN: "1"},
		{prompt: "fine", code: codes.OK, overloaded: -1},
	}
	for _, tt := range tests {
		_, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: tt.prompt})
		if got := client.Code(err); got != tt.code {
			t.Errorf("Code(%q) = %v; want %v", tt.prompt, got, tt.code)
		}
		if got := client.Reason(err); got != tt.reason {
			t.Errorf("Reason(%q) = %q; want %q", tt.prompt, got, tt.reason)
		}
		delay, ok := client.IsOverloaded(err)
		if ok != (tt.overloaded >= 0) || (ok && delay != tt.overloaded) {
			t.Errorf("IsOverloaded(%q) = %v, %v; want %v", tt.prompt, delay, ok, tt.overloaded)
		}
		if got := client.IsRetryable(err); got != tt.retryable {
			t.Errorf("IsRetryable(%q) = %v; want %v", tt.prompt, got, tt.retryable)
		}
		if got := client.IsDeadlineExceeded(err); got != tt.deadline {
			t.Errorf("IsDeadlineExceeded(%q) = %v; want %v", tt.prompt, got, tt.deadline)
		}
		var violations []string
		for _, v := range client.FieldViolations(err) {
			violations = append(violations, v.GetField()+": "+v.GetDescription())
		}
		if !slices.Equal(violations, tt.violations) {
			t.Errorf("FieldViolations(%q) = %q; want %q", tt.prompt, violations, tt.violations)
		}
		var subjects []string
		for _, v := range client.QuotaViolations(err) {
			subjects = append(subjects, v.GetSubject())
		}
		if !slices.Equal(subjects, tt.quotaSubjects) {
			t.Errorf("QuotaViolations(%q) = %q; want %q", tt.prompt, subjects, tt.quotaSubjects)
		}
		if got := client.ErrorMetadata(err)["steps_done"]; got != tt.metadataStepsN {
			t.Errorf("ErrorMetadata(%q)[steps_done] = %q; want %q", tt.prompt, got, tt.metadataStepsN)
		}
	}
}

// Errors that did not come over the wire.
func TestCode(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{fmt.Errorf("call: %w", context.Canceled), codes.Canceled},
		{client.ErrNoDeadline, codes.Unknown},
		{errors.New("boom"), codes.Unknown},
		{fmt.Errorf("max retries exhausted: %w", status.Error(codes.Unavailable, "down")), codes.Unavailable},
	}
	for _, tt := range tests {
		if got := client.Code(tt.err); got != tt.want {
			t.Errorf("Code(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
	if !client.IsDeadlineExceeded(context.DeadlineExceeded) {
		t.Error("IsDeadlineExceeded(context.DeadlineExceeded) = false")
	}
	if client.Reason(nil) != "" || client.FieldViolations(nil) != nil || client.ErrorMetadata(errors.New("x")) != nil {
		t.Error("helpers of errors without details returned details")
	}
	if client.IsRetryable(nil) || client.IsRetryable(context.Canceled) {
		t.Error("IsRetryable of nil or a cancel = true")
	}
}
