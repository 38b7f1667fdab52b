package client

// The client's load-balancing policy: grpc-go's round_robin (one
// pick_first child per replica, with the health listener that client-side
// health checking needs), whose picker also skips the replicas that have
// already refused the call being picked for load. A call that a replica
// refuses with OVERLOADED or QUEUE_FULL (see moveOnRefusal) then goes to
// another replica at once, and to none twice.

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"
)

// balancerName is the policy's name in the default service config. It is
// registered with grpc-go (balancers have no per-connection registry), so
// it carries the project's prefix.
const balancerName = "hourglass_round_robin"

func init() { balancer.Register(rrBuilder{}) }

type rrBuilder struct{}

func (rrBuilder) Name() string { return balancerName }

func (rrBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	// As grpc-go's round_robin is built, with the ClientConn wrapped so
	// that the pickers it makes can be replaced.
	return &rrBalancer{Balancer: endpointsharding.NewBalancer(&skipRefusedCC{ClientConn: cc}, opts,
		balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})}
}

type rrBalancer struct{ balancer.Balancer }

func (b *rrBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	// What round_robin passes on: the resolver state, with the health
	// listener turned on in the pick_first children.
	return b.Balancer.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

// skipRefusedCC replaces the round-robin picker of every Ready state with
// a skipRefused picker over the same ready replicas.
type skipRefusedCC struct{ balancer.ClientConn }

func (cc *skipRefusedCC) UpdateState(s balancer.State) {
	if s.ConnectivityState == connectivity.Ready {
		var ready []replicaPicker
		for _, child := range endpointsharding.ChildStatesFromPicker(s.Picker) {
			if child.State.ConnectivityState == connectivity.Ready {
				ready = append(ready, replicaPicker{key: endpointKey(child.Endpoint), picker: child.State.Picker})
			}
		}
		if len(ready) > 0 {
			p := &skipRefused{ready: ready}
			p.next.Store(rand.Uint32())
			s.Picker = p
		}
	}
	cc.ClientConn.UpdateState(s)
}

// replicaPicker is one ready replica: its pick_first child's picker, and
// the key its refusals are recorded under.
type replicaPicker struct {
	key    string
	picker balancer.Picker
}

// endpointKey names a replica by its resolver addresses, which stay the
// same when its connection is made again.
func endpointKey(ep resolver.Endpoint) string {
	addrs := make([]string, len(ep.Addresses))
	for i, a := range ep.Addresses {
		addrs[i] = a.Addr
	}
	return strings.Join(addrs, ",")
}

// skipRefused picks round robin over the ready replicas, as round_robin
// does, skipping those that refused the call for load (its route, from
// the call's context). When every ready replica has, it fails the pick
// with errEveryReplicaRefused, which the call replaces by the last
// refusal.
type skipRefused struct {
	ready []replicaPicker
	next  atomic.Uint32
}

// errEveryReplicaRefused fails a pick that found only replicas that
// refused the call. A status error ends the call at once (no retry); the
// client returns the last refusal instead.
var errEveryReplicaRefused = status.Error(codes.ResourceExhausted, "client: every replica refused the call for load")

func (p *skipRefused) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	rt := routeOf(info.Ctx)
	n := uint32(len(p.ready))
	start := p.next.Add(1)
	for i := range n {
		r := p.ready[(start+i)%n]
		if rt.hasRefused(r.key) {
			continue
		}
		res, err := r.picker.Pick(info)
		if err == nil {
			rt.picked(r.key)
		}
		return res, err
	}
	rt.pickedNone()
	return balancer.PickResult{}, errEveryReplicaRefused
}

// route is what the balancer knows of one Generate or GenerateStream call,
// over all its tries: which replicas refused it for load, and where its
// latest try went. A nil route (other calls) is never steered.
type route struct {
	mu sync.Mutex
	// steered: a skipRefused picker picked a try of this call; without
	// one (another policy from xDS or the resolver), the client cannot
	// choose the replica.
	steered bool
	last    string          // the replica of the latest pick; "" when it found none
	refused map[string]bool // the replicas that refused the call for load
	none    bool            // the latest pick failed: every ready replica had refused
}

type routeKey struct{}

// withRoute gives ctx a new route, for the tries of one call.
func withRoute(ctx context.Context) (context.Context, *route) {
	rt := &route{refused: map[string]bool{}}
	return context.WithValue(ctx, routeKey{}, rt), rt
}

func routeOf(ctx context.Context) *route {
	rt, _ := ctx.Value(routeKey{}).(*route)
	return rt
}

func (rt *route) hasRefused(key string) bool {
	if rt == nil {
		return false
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.refused[key]
}

func (rt *route) picked(key string) {
	if rt == nil {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.steered, rt.last, rt.none = true, key, false
}

func (rt *route) pickedNone() {
	if rt == nil {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.steered, rt.last, rt.none = true, "", true
}

// refuseLast records that the replica of the latest pick refused the call,
// and reports whether the balancer steers the call (otherwise nothing was
// recorded).
func (rt *route) refuseLast() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if !rt.steered || rt.last == "" {
		return false
	}
	rt.refused[rt.last] = true
	return true
}

// everyReplicaRefused reports whether the latest try found no replica that
// had not refused the call.
func (rt *route) everyReplicaRefused() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.none
}
