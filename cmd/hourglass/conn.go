package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hourglass-dev/hourglass/client"
)

const (
	// defaultAddr is where "make run" starts hourglassd.
	defaultAddr = "127.0.0.1:50051"
	// tokenEnv holds the bearer token when --token is not given, which
	// keeps it out of the process list and the shell history.
	tokenEnv = "HOURGLASS_TOKEN"
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

// connFlags are the flags every subcommand shares: where the servers are,
// how long a call may take, and the transport security and credentials.
// options is the one place that turns them into client options.
type connFlags struct {
	addrs   addrList
	timeout time.Duration
	token   string
	tls     bool
	tlsCA   string
	tlsCert string
	tlsKey  string
	// plaintextToken is --allow-plaintext-token.
	plaintextToken bool
}

// register adds the shared flags to fs; defaultTimeout differs per subcommand.
func (c *connFlags) register(fs *flag.FlagSet, defaultTimeout time.Duration) {
	c.addrs = addrList{addrs: []string{defaultAddr}}
	fs.Var(&c.addrs, "addr", "server `HOST:PORT` (or a gRPC target such as dns:///NAME:PORT); repeatable or comma-separated: generate balances over the servers, info and health ask each")
	fs.DurationVar(&c.timeout, "timeout", defaultTimeout, "deadline of the call, a `DURATION` such as 90s or 2m; 0 uses the client library's default, 60s")
	fs.StringVar(&c.token, "token", "", "bearer `TOKEN` sent with every call (default $"+tokenEnv+"); needs TLS unless --allow-plaintext-token")
	fs.BoolVar(&c.tls, "tls", false, "connect with TLS, verifying the server with the system's roots (implied by --tls-ca and --tls-cert)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "verify the server with the PEM CA certificates in `FILE` instead of the system's roots")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "present the PEM client certificate in `FILE` (mutual TLS); needs --tls-key")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of --tls-cert, in `FILE`")
	fs.BoolVar(&c.plaintextToken, "allow-plaintext-token", false, "send the token over a plain-text connection: only to loopback, or to a mesh sidecar that encrypts")
}

// check reports flag values that parse but make no sense, and takes the
// token from the environment when --token is not given.
func (c *connFlags) check() error {
	if c.timeout < 0 {
		return usagef("--timeout must not be negative, got %v", c.timeout)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	if c.token == "" {
		c.token = os.Getenv(tokenEnv)
	}
	if c.token != "" && !c.useTLS() && !c.plaintextToken {
		return usagef("a token (--token or $%s) is sent only over TLS: add --tls or --tls-ca, or --allow-plaintext-token for loopback or a mesh sidecar", tokenEnv)
	}
	return nil
}

// useTLS reports whether a TLS flag was given; the connection is plain
// text otherwise, as hourglassd's is by default.
func (c *connFlags) useTLS() bool {
	return c.tls || c.tlsCA != "" || c.tlsCert != ""
}

// options are the client options of the shared flags.
func (c *connFlags) options() []client.Option {
	var opts []client.Option
	if c.useTLS() {
		if c.tlsCA != "" {
			opts = append(opts, client.WithCAFile(c.tlsCA))
		}
		if c.tlsCert != "" {
			opts = append(opts, client.WithClientCertificate(c.tlsCert, c.tlsKey))
		}
	} else {
		opts = append(opts, client.WithInsecure())
	}
	if c.token != "" {
		opts = append(opts, client.WithToken(c.token))
		if c.plaintextToken {
			opts = append(opts, client.AllowTokenOverPlaintext())
		}
	}
	return opts
}

// callContext bounds ctx by --timeout. grpc-go sends the context deadline to
// the server as grpc-timeout, which is the deadline hourglass enforces.
// Without one (--timeout 0) the client library applies its default.
func (c *connFlags) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// connect makes a client for target: one address, or several joined by
// commas, which the client balances over. It does not connect yet: an
// unreachable server shows up as UNAVAILABLE from the first call.
func (c *connFlags) connect(target string, extra ...client.Option) (*client.Client, error) {
	if target == "" {
		return nil, usagef("no server address")
	}
	cl, err := client.New(target, append(c.options(), extra...)...)
	if err != nil {
		return nil, localf("connect to %s: %v", target, err)
	}
	return cl, nil
}

// connectAll makes one client over every --addr.
func (c *connFlags) connectAll(extra ...client.Option) (*client.Client, error) {
	return c.connect(strings.Join(c.addrs.addrs, ","), extra...)
}
