package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	// defaultAddr is where "make run" starts hourglassd.
	defaultAddr = "127.0.0.1:50051"
	// maxRecvMsgSize lifts gRPC's 4 MiB default, which one 2048×2048 PNG
	// (up to about 12 MiB of noise-like pixels) already exceeds.
	maxRecvMsgSize = 256 << 20
)

// addrList is the value of --addr: repeatable, each value possibly a
// comma-separated list. The first --addr replaces the default rather than
// adding to it.
type addrList struct {
	addrs []string
	set   bool
}

func (a *addrList) String() string {
	if a == nil {
		return ""
	}
	return strings.Join(a.addrs, ",")
}

func (a *addrList) Set(v string) error {
	if !a.set {
		a.addrs, a.set = nil, true
	}
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		a.addrs = append(a.addrs, part)
	}
	if len(a.addrs) == 0 {
		return fmt.Errorf("empty address")
	}
	return nil
}

// connFlags are the flags every subcommand shares: where the server is and
// how long a call may take.
type connFlags struct {
	addrs   addrList
	timeout time.Duration
	// TLS and credentials flags (--tls, --ca, --token, ...) belong here;
	// dialOptions is the one place that turns them into gRPC options.
}

// register adds the shared flags to fs; defaultTimeout differs per subcommand.
func (c *connFlags) register(fs *flag.FlagSet, defaultTimeout time.Duration) {
	c.addrs = addrList{addrs: []string{defaultAddr}}
	fs.Var(&c.addrs, "addr", "server `HOST:PORT`; repeatable or comma-separated")
	fs.DurationVar(&c.timeout, "timeout", defaultTimeout, "deadline of the call, a `DURATION` such as 90s or 2m; 0 sends none, so the server's default applies")
}

// check reports flag values that parse but make no sense.
func (c *connFlags) check() error {
	if c.timeout < 0 {
		return usagef("--timeout must not be negative, got %v", c.timeout)
	}
	return nil
}

// callContext bounds ctx by --timeout. grpc-go sends the context deadline to
// the server as grpc-timeout, which is the deadline hourglass enforces.
func (c *connFlags) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// dialOptions are the gRPC options every connection uses. Transport is
// plain text for now; TLS and per-call credentials go here.
func (c *connFlags) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
	}
}

// dial connects to the servers in addrs. It takes the whole list so that
// client-side load balancing can be added here without touching callers;
// for now it uses the first address. grpc.NewClient does not connect yet:
// an unreachable server shows up as UNAVAILABLE from the first call.
func dial(addrs []string, opts []grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, usagef("no server address")
	}
	conn, err := grpc.NewClient(addrs[0], opts...)
	if err != nil {
		return nil, localf("connect to %s: %v", addrs[0], err)
	}
	return conn, nil
}

// connect dials the servers named by the shared flags.
func (c *connFlags) connect() (*grpc.ClientConn, error) {
	return dial(c.addrs.addrs, c.dialOptions())
}
