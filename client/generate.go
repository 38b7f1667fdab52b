package client

import (
	"context"
	"errors"
	"io"
	"iter"
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// Generate runs one job and returns all its images at once. A try that
// fails with UNAVAILABLE (a replica gone, a worker crashed, a server
// draining) is retried, on another replica when there is one, with the
// same seed, so the images are the ones the first try would have made. A
// try that a replica refuses for load (OVERLOADED, QUEUE_FULL) moves at
// once to a replica that has not refused the call; when every replica
// has, the last refusal is returned. Images travel in one message: for
// large jobs, GenerateStream sends them one by one.
func (c *Client) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	ctx, cancel, err := c.callContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	req = withSeed(req)
	ctx, m := c.newMover(ctx)
	for attempt := 1; ; attempt++ {
		var p peer.Peer
		resp, err := c.api.Generate(ctx, req, grpc.Peer(&p))
		if err == nil {
			return resp, nil
		}
		if last := m.everyReplicaRefused(); last != nil {
			return nil, last
		}
		if !m.move(ctx, attempt, peerAddr(&p), err) {
			return nil, err
		}
	}
}

// isLoadRefusal reports whether err is a replica's refusal for its own
// load: RESOURCE_EXHAUSTED with reason OVERLOADED or QUEUE_FULL, and no
// QuotaFailure (a tenant over its quota is refused by every replica).
func isLoadRefusal(err error) bool {
	if Code(err) != codes.ResourceExhausted || QuotaViolations(err) != nil {
		return false
	}
	r := Reason(err)
	return r == ReasonOverloaded || r == ReasonQueueFull
}

// mover decides, for one call, whether a try refused for load moves to
// another replica.
type mover struct {
	c  *Client
	rt *route
	// refusedPeers are the replicas (by peer address) that refused a call
	// the balancer does not steer.
	refusedPeers map[string]bool
	last         error // the latest refusal
}

// newMover gives ctx the route the client's balancer steers the call's
// tries with.
func (c *Client) newMover(ctx context.Context) (context.Context, *mover) {
	ctx, rt := withRoute(ctx)
	return ctx, &mover{c: c, rt: rt, refusedPeers: map[string]bool{}}
}

// move reports whether the call is tried again at once after try attempt
// failed with err on the replica at addr. It moves on a refusal for load
// while attempts are left and the deadline has not passed; the balancer
// then skips the replicas that refused. Under a policy that the client
// does not steer (xDS), the next try goes where that policy picks, and the
// call stops when a replica refuses it a second time.
func (m *mover) move(ctx context.Context, attempt int, addr string, err error) bool {
	if !isLoadRefusal(err) {
		return false
	}
	m.last = err
	if m.c.opts.onLoadRefusal != nil {
		m.c.opts.onLoadRefusal(attempt, addr, err)
	}
	if attempt >= m.c.opts.maxAttempts || ctx.Err() != nil {
		return false
	}
	if m.rt.refuseLast() {
		return true
	}
	if addr == "" || m.refusedPeers[addr] {
		return false
	}
	m.refusedPeers[addr] = true
	return true
}

// everyReplicaRefused is the last refusal when the latest try found only
// replicas that had refused the call, nil otherwise.
func (m *mover) everyReplicaRefused() error {
	if m.last != nil && m.rt.everyReplicaRefused() {
		return m.last
	}
	return nil
}

// peerAddr is the address of the replica a try reached, "" when it
// reached none.
func peerAddr(p *peer.Peer) string {
	if p.Addr == nil {
		return ""
	}
	return p.Addr.String()
}

// GenerateStream runs one job and yields its events as they come: queued
// (again when the position changes), started, progress, previews when
// req asks for them, each image, and done. It ends after done, or with
// one (nil, err) pair when the job fails; stopping the loop early cancels
// the job.
//
// A stream that fails with UNAVAILABLE before its first image is started
// again with the same seed, up to the client's attempts in all, and the
// new attempt's events follow: queued and started come again (with the
// same seed), and progress starts over. Once an image was yielded the
// failure is returned instead, since the caller may have used it; retry
// with Seed set to the started event's seed to get the same images.
//
// A stream that a replica refuses for load (OVERLOADED, QUEUE_FULL) before
// anything but queued events moves at once, with the same seed, to a
// replica that has not refused it, as Generate does; the caller may see
// queued events from both.
func (c *Client) GenerateStream(ctx context.Context, req *hourglassv1.GenerateRequest) iter.Seq2[*hourglassv1.GenerateEvent, error] {
	return func(yield func(*hourglassv1.GenerateEvent, error) bool) {
		ctx, cancel, err := c.callContext(ctx)
		if err != nil {
			yield(nil, err)
			return
		}
		defer cancel()
		req := withSeed(req)
		ctx, m := c.newMover(ctx)
		for attempt := 1; ; attempt++ {
			r := c.streamAttempt(ctx, req, yield)
			if r.stopped || r.err == nil {
				return
			}
			if last := m.everyReplicaRefused(); last != nil {
				yield(nil, last)
				return
			}
			// Refused before the job started: another replica, at once.
			if !r.started && m.move(ctx, attempt, r.peer, r.err) {
				continue
			}
			if !c.restartable(r, attempt) {
				yield(nil, r.err)
				return
			}
			wait := retryBackoff(attempt)
			if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
				// The deadline would pass during the backoff: say why
				// the job failed rather than that time ran out.
				yield(nil, r.err)
				return
			}
			if c.opts.onStreamRetry != nil {
				c.opts.onStreamRetry(attempt+1, r.err)
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				yield(nil, status.FromContextError(ctx.Err()).Err())
				return
			}
		}
	}
}

// attemptResult is how one stream attempt ended.
type attemptResult struct {
	err     error  // nil: done was yielded
	stopped bool   // the caller stopped the loop
	events  int    // events received
	started bool   // an event other than queued was received
	images  int    // images yielded
	peer    string // the replica's address; "" when it reached none
}

// streamAttempt runs one GenerateStream call and yields its events.
func (c *Client) streamAttempt(ctx context.Context, req *hourglassv1.GenerateRequest, yield func(*hourglassv1.GenerateEvent, error) bool) attemptResult {
	// Ending the attempt's context releases the stream when the caller
	// stops early or the attempt fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		r attemptResult
		p peer.Peer
	)
	stream, err := c.api.GenerateStream(ctx, req, grpc.Peer(&p))
	if err != nil {
		r.err, r.peer = err, peerAddr(&p)
		return r
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// A server ends a successful stream with done.
			r.err = status.Error(codes.Unknown, "the server ended the stream without a done event")
			return r
		}
		if err != nil {
			// grpc-go fills p in when the stream ends.
			r.err, r.peer = err, peerAddr(&p)
			return r
		}
		r.events++
		if ev.GetQueued() == nil {
			r.started = true
		}
		if ev.GetImage() != nil {
			r.images++
		}
		if !yield(ev, nil) {
			r.stopped = true
			return r
		}
		if ev.GetDone() != nil {
			// Read the end of the stream, so that it ends OK rather than
			// cancelled (in stats handlers and the server's log).
			for {
				if _, err := stream.Recv(); err != nil {
					return r
				}
			}
		}
	}
}

// restartable reports whether a failed stream attempt may be started
// again. One that failed before any event was already retried by grpc-go's
// retry policy (a stream is retried there only until its first response
// headers, which come with its first event), so it is not retried again
// here.
func (c *Client) restartable(r attemptResult, attempt int) bool {
	return attempt < c.opts.maxAttempts && r.events > 0 && r.images == 0 &&
		status.Code(r.err) == codes.Unavailable
}

// retryBackoff is the wait before retry n (from 1), as grpc-go's retry
// policy computes it with the client's service config.
func retryBackoff(n int) time.Duration {
	d := min(float64(initialBackoff)*math.Pow(2, float64(n-1)), float64(maxBackoff))
	return time.Duration(d * (0.8 + 0.4*rand.Float64()))
}

// GenerateWithProgress runs one job with GenerateStream, calls onEvent (when
// not nil) with each event, and returns the images and stats as Generate
// would: the images arrive one message each, so their total size is not
// bounded by WithMaxRecvMsgSize.
func (c *Client) GenerateWithProgress(ctx context.Context, req *hourglassv1.GenerateRequest, onEvent func(*hourglassv1.GenerateEvent)) (*hourglassv1.GenerateResponse, error) {
	resp := &hourglassv1.GenerateResponse{}
	for ev, err := range c.GenerateStream(ctx, req) {
		if err != nil {
			return nil, err
		}
		if onEvent != nil {
			onEvent(ev)
		}
		switch {
		case ev.GetImage() != nil:
			resp.Images = append(resp.Images, ev.GetImage())
		case ev.GetDone() != nil:
			resp.Stats = ev.GetDone().GetStats()
		}
	}
	return resp, nil
}

// withSeed returns req with a seed: req itself when it has one, else a
// copy with a random one. The seed is fixed here, before the first try, so
// that every retry asks for the same images; the caller's message is
// never changed. Seeds stay below 2^63, as the server's own do, for
// callers that store them as signed integers.
func withSeed(req *hourglassv1.GenerateRequest) *hourglassv1.GenerateRequest {
	if req == nil {
		req = &hourglassv1.GenerateRequest{}
	}
	if req.Seed != nil {
		return req
	}
	r := proto.CloneOf(req)
	r.Seed = proto.Uint64(rand.Uint64() >> 1)
	return r
}
