package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	// Registers grpc-go's client-side health checking, which the
	// healthCheckConfig of the default service config turns on; without
	// this import grpc-go silently ignores that setting.
	_ "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// ServiceName is the gRPC service hourglassd serves, and the service its
// health reports name.
const ServiceName = "hourglass.v1.GenerateService"

// listScheme is the scheme of the per-client resolver that serves a list
// of addresses. It is registered on the client's own connection only
// (grpc.WithResolvers), never globally.
const listScheme = "hourglass-list"

// Client calls hourglassd replicas. It is safe for concurrent use; make one
// per process (or per set of replicas) and Close it when done.
type Client struct {
	conn   *grpc.ClientConn
	api    hourglassv1.GenerateServiceClient
	health healthpb.HealthClient
	opts   options
}

// New makes a client for target, which is one of
//
//   - "host:port" or "dns:///host:port": every address the name resolves to
//     is a replica (gRPC's DNS resolver re-resolves when connections fail);
//   - "host1:port1,host2:port2,...": a fixed list of replicas;
//   - "xds:///name", when the program imports google.golang.org/grpc/xds
//     (see the package doc);
//   - any other gRPC target whose resolver the program registered
//     ("unix:///path", "passthrough:///host:port", ...).
//
// New does not connect: connections are made in the background and a call
// made before any replica is reachable fails with UNAVAILABLE.
func New(target string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxAttempts < 1 || o.maxAttempts > maxAttemptsCap {
		return nil, fmt.Errorf("client: WithMaxAttempts(%d): want 1 to %d", o.maxAttempts, maxAttemptsCap)
	}
	if o.defaultTimeout < 0 {
		return nil, fmt.Errorf("client: WithDefaultTimeout(%v): must not be negative", o.defaultTimeout)
	}
	if o.maxRecvMsgSize <= 0 {
		return nil, fmt.Errorf("client: WithMaxRecvMsgSize(%d): must be positive", o.maxRecvMsgSize)
	}
	creds, err := o.transportCredentials()
	if err != nil {
		return nil, err
	}
	grpcTarget, addrs, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(serviceConfig(o.maxAttempts, o.healthCheck)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxRecvMsgSize)),
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearerToken{token: o.token, requireTLS: !o.tokenPlaintext}))
	}
	if addrs != nil {
		dial = append(dial, grpc.WithResolvers(listResolver(addrs)))
	}
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(grpcTarget, dial...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Client{
		conn:   conn,
		api:    hourglassv1.NewGenerateServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
		opts:   o,
	}, nil
}

// Close closes every connection. Calls in flight end with CANCELLED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying gRPC connection, for calls the client has no
// method for. Calls made on it directly get the retry policy and the
// balancing, but neither the default deadline nor the seed.
func (c *Client) Conn() grpc.ClientConnInterface { return c.conn }

// ServerInfo describes one replica (whichever the balancer picks): models,
// styles, limits, workers and queue depth.
func (c *Client) ServerInfo(ctx context.Context) (*hourglassv1.GetServerInfoResponse, error) {
	ctx, cancel, err := c.callContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	return c.api.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
}

// Health asks grpc.health.v1 for the status of service ("" for the whole
// server) on one replica. With the client's health checking on (the
// default), a call reaches only replicas that report ServiceName SERVING,
// so when none does Health fails with UNAVAILABLE rather than answering
// NOT_SERVING: use WithoutHealthCheck, on a client for one address, to ask
// a particular server.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel, err := c.callContext(ctx)
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	defer cancel()
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// ErrNoDeadline is returned, before anything is sent, for a call whose
// context has no deadline when WithDefaultTimeout(0) asked the client to
// refuse such calls.
var ErrNoDeadline = errors.New("client: the call's context has no deadline (set one, or leave WithDefaultTimeout on)")

// callContext gives ctx the client's default deadline when it has none.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel := context.WithCancel(ctx)
		return ctx, cancel, nil
	}
	if c.opts.defaultTimeout == 0 {
		return nil, nil, ErrNoDeadline
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.defaultTimeout)
	return ctx, cancel, nil
}

// parseTarget splits a comma-separated list of addresses from any other
// target, which grpc.NewClient gets as it is. For a list it returns the
// target of the list resolver and the addresses.
func parseTarget(target string) (string, []string, error) {
	target = strings.TrimSpace(target)
	if target == "" {
		return "", nil, errors.New("client: empty target")
	}
	if !strings.Contains(target, ",") {
		return target, nil, nil
	}
	var addrs []string
	for part := range strings.SplitSeq(target, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if strings.Contains(part, "://") {
			return "", nil, fmt.Errorf("client: target %q: a list holds host:port addresses; for a name with several addresses use one dns:/// target", target)
		}
		if _, _, err := net.SplitHostPort(part); err != nil {
			return "", nil, fmt.Errorf("client: target %q: %w", target, err)
		}
		addrs = append(addrs, part)
	}
	if len(addrs) == 0 {
		return "", nil, fmt.Errorf("client: target %q holds no address", target)
	}
	return listScheme + ":///replicas", addrs, nil
}

// listResolver serves a fixed list of addresses, one endpoint each, so
// that the round robin balances over them and health-checks each. ServerName
// is the address itself: TLS then verifies each replica against its own
// name, not against the list's.
func listResolver(addrs []string) *manual.Resolver {
	r := manual.NewBuilderWithScheme(listScheme)
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: a, ServerName: a}}}
	}
	r.InitialState(resolver.State{Endpoints: eps})
	return r
}

// Retry backoff of both grpc-go's retry policy and the client's own stream
// restarts: the n-th retry waits initialBackoff × 2^(n-1), at most
// maxBackoff, times a random factor in [0.8, 1.2).
const (
	initialBackoff = 100 * time.Millisecond
	maxBackoff     = time.Second
)

// serviceConfig is the default service config (gRFC A2 JSON): the client's
// round robin (balancer.go) over every replica, health-checked on
// ServiceName when healthCheck, and retries of UNAVAILABLE on every method
// of ServiceName. A resolver that supplies its own config (xDS, DNS TXT
// records) replaces it.
func serviceConfig(maxAttempts int, healthCheck bool) string {
	type obj = map[string]any
	sc := obj{"loadBalancingConfig": []obj{{balancerName: obj{}}}}
	if healthCheck {
		sc["healthCheckConfig"] = obj{"serviceName": ServiceName}
	}
	if maxAttempts > 1 {
		sc["methodConfig"] = []obj{{
			"name": []obj{{"service": ServiceName}},
			"retryPolicy": obj{
				"maxAttempts":          maxAttempts,
				"initialBackoff":       durationJSON(initialBackoff),
				"maxBackoff":           durationJSON(maxBackoff),
				"backoffMultiplier":    2,
				"retryableStatusCodes": []string{"UNAVAILABLE"},
			},
		}}
	}
	b, err := json.Marshal(sc)
	if err != nil {
		panic(err) // maps of strings and numbers always marshal
	}
	return string(b)
}

// durationJSON is d in the service config's duration form ("0.1s").
func durationJSON(d time.Duration) string {
	return fmt.Sprintf("%gs", d.Seconds())
}
