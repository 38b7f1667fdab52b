package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errHelp is returned by a subcommand when -h asked for its flags: the flags
// were printed and the exit status is 0.
var errHelp = flag.ErrHelp

// usageError is a mistake in the command line (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// localError is a failure on this machine, not reported by the server, such
// as a file that cannot be written (exit 1).
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

func localf(format string, args ...any) error {
	return &localError{err: fmt.Errorf(format, args...)}
}

// notServingError is a health answer other than SERVING (exit 3). It is not
// a failed call: the server answered.
type notServingError struct{ status string }

func (e *notServingError) Error() string { return "service is " + e.status }

// reportedError is the outcome of a command that asked several servers and
// printed each answer, failures included, on stdout: its exit status is
// the first failure's, and only a summary goes to stderr.
type reportedError struct {
	first      error
	failed, of int
}

func (e *reportedError) Error() string {
	return fmt.Sprintf("%d of %d servers failed; the first: %v", e.failed, e.of, e.first)
}

func (e *reportedError) Unwrap() error { return e.first }

// reportFailures is nil when no server failed, else a reportedError.
func reportFailures(failed []error, of int) error {
	if len(failed) == 0 {
		return nil
	}
	return &reportedError{first: failed[0], failed: len(failed), of: of}
}

// exitStatus maps the error a subcommand returned to the process exit status;
// the package doc has the table.
func exitStatus(err error) int {
	var (
		usage      *usageError
		local      *localError
		notServing *notServingError
	)
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &usage):
		return exitUsage
	case errors.As(err, &local):
		return exitLocal
	case errors.As(err, &notServing):
		return exitNotServing
	}
	return exitCodeFor(statusOf(err).Code())
}

// statusOf is the gRPC status of a failed call. A bare context error (the
// call never started because Ctrl-C or the deadline came first) maps to
// CANCELLED or DEADLINE_EXCEEDED as gRPC itself would map it.
func statusOf(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err)
	}
	return status.Convert(err)
}

// exitCodeFor is exitCodeBase plus the numeric gRPC code. Codes outside the
// range gRPC defines (a misbehaving server or proxy) exit as UNKNOWN, so that
// every exit status stays in the documented table.
func exitCodeFor(c codes.Code) int {
	if c == codes.OK {
		return exitOK
	}
	if c > codes.Unauthenticated {
		c = codes.Unknown
	}
	return exitCodeBase + int(c)
}

// codeName is the canonical upper-case name of a gRPC code, as the gRPC
// specification and other languages spell it ("DEADLINE_EXCEEDED").
// codes.Code.String returns the Go spelling ("DeadlineExceeded"), so the
// words are split at capitals; CANCELLED keeps the specification's double L,
// which the Go name (Canceled) lacks.
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	s := c.String()
	if rest, ok := strings.CutPrefix(s, "Code("); ok {
		// An undefined code: String gives "Code(17)".
		return "CODE_" + strings.TrimSuffix(rest, ")")
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) && !unicode.IsUpper(rune(s[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// printError writes the one-line error message, and for a failed call the
// details the server attached, one indented line each.
func printError(w io.Writer, err error) {
	var (
		usage      *usageError
		local      *localError
		notServing *notServingError
		reported   *reportedError
	)
	switch {
	case errors.As(err, &reported):
		fmt.Fprintf(w, "hourglass: %d of %d servers failed\n", reported.failed, reported.of)
		return
	case errors.As(err, &usage):
		fmt.Fprintf(w, "hourglass: %s\nRun 'hourglass help' for usage.\n", usage.msg)
		return
	case errors.As(err, &local), errors.As(err, &notServing):
		fmt.Fprintf(w, "hourglass: %v\n", err)
		return
	}
	st := statusOf(err)
	fmt.Fprintf(w, "hourglass: %s: %s\n", codeName(st.Code()), st.Message())
	for _, line := range detailLines(st.Details()) {
		fmt.Fprintf(w, "  %s\n", line)
	}
}

// detailLines renders the error details a user can act on: which fields are
// wrong, when to retry, and why. Detail types this client does not know, and
// details it could not decode, are left out.
func detailLines(details []any) []string {
	var lines []string
	for _, d := range details {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				lines = append(lines, v.GetField()+": "+v.GetDescription())
			}
		case *validate.Violations:
			for _, v := range d.GetViolations() {
				line := fieldPath(v.GetField()) + ": " + v.GetMessage()
				if id := v.GetRuleId(); id != "" {
					line += " [" + id + "]"
				}
				lines = append(lines, line)
			}
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil {
				lines = append(lines, "retry after "+delay.AsDuration().String())
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				lines = append(lines, "quota "+v.GetSubject()+": "+v.GetDescription())
			}
		case *errdetails.ErrorInfo:
			lines = append(lines, errorInfoLine(d))
		}
	}
	return lines
}

// errorInfoLine renders an ErrorInfo as "reason: R (domain D, k=v, ...)",
// metadata sorted by key so that the output is stable.
func errorInfoLine(d *errdetails.ErrorInfo) string {
	var extra []string
	if dom := d.GetDomain(); dom != "" {
		extra = append(extra, "domain "+dom)
	}
	md := d.GetMetadata()
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		extra = append(extra, k+"="+md[k])
	}
	line := "reason: " + d.GetReason()
	if len(extra) > 0 {
		line += " (" + strings.Join(extra, ", ") + ")"
	}
	return line
}

// fieldPath renders a protovalidate field path the way protovalidate-go
// does, e.g. "styles[2]" or "labels[\"k\"]".
func fieldPath(p *validate.FieldPath) string {
	var b strings.Builder
	for i, e := range p.GetElements() {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e.GetFieldName())
		switch s := e.GetSubscript().(type) {
		case *validate.FieldPathElement_Index:
			b.WriteString("[" + strconv.FormatUint(s.Index, 10) + "]")
		case *validate.FieldPathElement_BoolKey:
			b.WriteString("[" + strconv.FormatBool(s.BoolKey) + "]")
		case *validate.FieldPathElement_IntKey:
			b.WriteString("[" + strconv.FormatInt(s.IntKey, 10) + "]")
		case *validate.FieldPathElement_UintKey:
			b.WriteString("[" + strconv.FormatUint(s.UintKey, 10) + "]")
		case *validate.FieldPathElement_StringKey:
			b.WriteString("[" + strconv.Quote(s.StringKey) + "]")
		}
	}
	return b.String()
}
