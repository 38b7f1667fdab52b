// Package worker is the Go library for writing hourglass workers.
//
// A worker is a separate process that the hourglass executor starts, talks to
// over a Unix socket and kills when a job outlives its deadline. Running jobs
// in processes rather than goroutines is the point of hourglass: a process can
// always be stopped, a goroutine (or a Python thread) cannot. This package
// takes care of the protocol side of that contract
// (hourglass.worker.v1.WorkerService) so that a worker author only writes a
// Generator:
//
//   - one job at a time; a second Run is refused with FAILED_PRECONDITION,
//   - Describe reports busy until Generate has really returned, which is how
//     the executor learns that a cancelled job let go of the device,
//   - every progress event doubles as a cancellation check,
//   - errors and panics become the status codes the executor expects,
//   - prompts never reach the log.
//
// A minimal worker:
//
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
//	defer stop()
//	err := worker.Serve(ctx, worker.Options{SocketPath: path, Generator: myGen{}})
package worker

import (
	"context"
	"errors"
	"fmt"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Generator is what a worker author implements.
//
// The library calls Generate for one job at a time, so an implementation
// needs no locking of its own for per-job state.
type Generator interface {
	// Describe says what the generator offers. It is called on every
	// Describe RPC, so it may report live values such as memory use; it
	// must be cheap and must not block on a running job.
	Describe() Description

	// Generate runs one validated job. It must call out.Progress after every
	// step and return that call's error at once when it is non-nil: that is
	// how a cancelled or expired job stops at the next step. Images go to
	// out.Image as soon as each is encoded. When job.PreviewEveryNSteps is
	// non-zero it may also send previews to out.Preview; they are optional.
	//
	// Return ErrOutOfMemory (possibly wrapped) when the device ran out of
	// memory, an *InvalidJobError for a job this generator cannot run, and
	// the context's error when it stopped because of it.
	Generate(ctx context.Context, job *workerv1.Job, out Emitter) error
}

// Emitter streams a job's events back to the executor.
//
// Its methods are safe for concurrent use, and they fail once Generate has
// returned, so a goroutine a generator forgot to stop cannot write into the
// next job's stream. Progress and Image are the job's result; previews
// (Preview) are an optional extra that a generator may skip.
type Emitter interface {
	// Progress reports that step (from 1) of totalSteps finished for image
	// imageIndex (from 0). It doubles as the worker's heartbeat and as its
	// cancellation check: when the job's context is done it returns the
	// context's error, and the generator must return that error.
	Progress(step, totalSteps, imageIndex uint32) error
	// Image sends one finished, encoded image.
	Image(img *hourglassv1.Image) error
	// Preview sends a small, lossy look at the image being sampled: a JPEG
	// whose long side is at most 256 pixels, for the step (from 1) and image
	// (from 0) it names. Previews are optional and lossy: send them only
	// when the job's PreviewEveryNSteps is non-zero, at most every that many
	// steps, and skip any (or all) that would cost too much; the executor
	// may drop them for slow readers, and nothing may depend on one
	// arriving. Like Progress, it returns the context's error once the
	// job's context is done, and the generator must then return that error.
	Preview(p *hourglassv1.Preview) error
}

// Description is what Describe reports besides the busy state, which the
// library tracks itself.
type Description struct {
	// Models the worker can run; exactly one should be the default.
	Models []Model
	// Style names the worker understands.
	Styles []string
	// Compute device, such as "cpu" or "cuda:0".
	Device string
	// Device memory in bytes; zero means unknown.
	MemoryTotalBytes uint64
	// Device memory in use in bytes; zero means unknown.
	MemoryUsedBytes uint64
	// Implementation and version, such as "hourglass-worker/0.1.0".
	Version string
}

// Model is one model a worker can run.
type Model struct {
	Name    string
	Default bool
}

// ErrOutOfMemory tells the library that a job failed because the device ran
// out of memory. Wrap it (fmt.Errorf("…: %w", worker.ErrOutOfMemory)) to add
// context. The executor gets RESOURCE_EXHAUSTED with an ErrorInfo whose reason
// is ReasonOutOfMemory, so it can tell this apart from a full queue and, for
// example, retry on a worker with more memory instead of backing off.
var ErrOutOfMemory = errors.New("device out of memory")

// ErrorInfo reason and domain attached to out-of-memory failures.
const (
	ReasonOutOfMemory = "WORKER_OUT_OF_MEMORY"
	ErrorDomain       = "hourglass.dev"
)

// InvalidJobError reports a job the worker refuses to run, such as an unknown
// model or style. The server validates requests before they reach a worker;
// this exists for defence in depth, because a worker may be reached by a buggy
// executor. It becomes INVALID_ARGUMENT with a BadRequest field violation.
type InvalidJobError struct {
	// Field is the Job field at fault, such as "model" or "styles".
	Field string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidJobError) Error() string {
	return fmt.Sprintf("invalid job: %s: %s", e.Field, e.Reason)
}

// GRPCStatus makes the error carry its own status, so it keeps its code even
// when wrapped and passed through code that only knows about gRPC statuses.
func (e *InvalidJobError) GRPCStatus() *status.Status {
	st := status.New(codes.InvalidArgument, e.Error())
	withDetails, err := st.WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{
			Field:       "job." + e.Field,
			Description: e.Reason,
		}},
	})
	if err != nil {
		return st
	}
	return withDetails
}
