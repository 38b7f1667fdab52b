package client

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
)

// Defaults of the options; the package doc explains each choice.
const (
	// DefaultTimeout is the deadline given to a call whose context has
	// none. It equals hourglassd's own timeouts.default.
	DefaultTimeout = 60 * time.Second
	// DefaultMaxAttempts is how many times a call is tried in all when a
	// try fails with UNAVAILABLE, and how many replicas a call refused for
	// load is tried on at most.
	DefaultMaxAttempts = 3
	// DefaultMaxRecvMsgSize is the largest message the client accepts.
	// gRPC's own default, 4 MiB, is less than one 2048×2048 PNG.
	DefaultMaxRecvMsgSize = 256 << 20
	// maxAttemptsCap is grpc-go's upper bound on retryPolicy.maxAttempts;
	// larger values are silently cut to it there, so they are refused here.
	maxAttemptsCap = 5
)

// Option configures a Client; pass options to New.
type Option func(*options)

// options is every setting New applies, with the defaults visible in
// defaultOptions.
type options struct {
	insecure       bool
	tlsConfig      *tls.Config
	caFile         string
	certFile       string
	keyFile        string
	token          string
	tokenPlaintext bool
	defaultTimeout time.Duration
	maxAttempts    int
	maxRecvMsgSize int
	healthCheck    bool
	onStreamRetry  func(attempt int, err error)
	onLoadRefusal  func(attempt int, replica string, err error)
	dialOptions    []grpc.DialOption
}

func defaultOptions() options {
	return options{
		defaultTimeout: DefaultTimeout,
		maxAttempts:    DefaultMaxAttempts,
		maxRecvMsgSize: DefaultMaxRecvMsgSize,
		healthCheck:    true,
	}
}

// tlsRequested reports whether an option asked for TLS explicitly.
func (o *options) tlsRequested() bool {
	return o.tlsConfig != nil || o.caFile != "" || o.certFile != "" || o.keyFile != ""
}

// WithInsecure connects in plain text, without TLS. Use it for a server on
// loopback, or behind a service-mesh sidecar that encrypts the hop itself.
// It cannot be combined with the TLS options.
func WithInsecure() Option {
	return func(o *options) { o.insecure = true }
}

// WithTLSConfig sets the TLS configuration (server name, roots, client
// certificates, minimum version). The client keeps a copy. WithCAFile and
// WithClientCertificate, when also given, fill in its RootCAs and
// Certificates.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) { o.tlsConfig = cfg.Clone() }
}

// WithCAFile trusts the PEM certificates in path, instead of the system's
// roots, to verify the server.
func WithCAFile(path string) Option {
	return func(o *options) { o.caFile = path }
}

// WithClientCertificate presents the PEM certificate and key in certFile and
// keyFile to the server (mutual TLS). hourglassd with tls.client_ca set
// requires one and names the caller's tenant after its common name.
func WithClientCertificate(certFile, keyFile string) Option {
	return func(o *options) { o.certFile, o.keyFile = certFile, keyFile }
}

// WithToken sends "authorization: Bearer TOKEN" with every call, as
// hourglassd with auth.tokens_file requires. The token travels only over
// TLS unless AllowTokenOverPlaintext is also given.
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// AllowTokenOverPlaintext lets WithToken send the token over a WithInsecure
// connection. Anyone who can read the traffic can then read the token: use
// it only on loopback, or where a mesh sidecar encrypts the hop.
func AllowTokenOverPlaintext() Option {
	return func(o *options) { o.tokenPlaintext = true }
}

// WithDefaultTimeout sets the deadline of calls whose context has none
// (DefaultTimeout when not given). Zero makes the client refuse such calls
// with ErrNoDeadline instead.
func WithDefaultTimeout(d time.Duration) Option {
	return func(o *options) { o.defaultTimeout = d }
}

// WithMaxAttempts sets how many times a call is tried in all when a try
// fails with UNAVAILABLE, and how many replicas a call that replicas
// refuse for load (OVERLOADED, QUEUE_FULL) is tried on at most
// (DefaultMaxAttempts when not given); 1 turns both off. grpc-go allows at
// most 5.
func WithMaxAttempts(n int) Option {
	return func(o *options) { o.maxAttempts = n }
}

// WithMaxRecvMsgSize sets the largest message the client accepts, in bytes
// (DefaultMaxRecvMsgSize when not given). A Generate response holds every
// image of the job.
func WithMaxRecvMsgSize(n int) Option {
	return func(o *options) { o.maxRecvMsgSize = n }
}

// WithoutHealthCheck turns client-side health checking off: every
// connected server gets calls, serving or not. Use it to ask one server
// about itself (the hourglass CLI's health and info do), or for a proxy
// that does not pass grpc.health.v1 through.
func WithoutHealthCheck() Option {
	return func(o *options) { o.healthCheck = false }
}

// OnStreamRetry calls fn before GenerateStream (and GenerateWithProgress)
// starts a job again after an UNAVAILABLE failure: attempt is the attempt
// about to start (2 or more), err the failure. It is not called for the
// retries grpc-go makes before the first event, which a stats handler
// (WithGRPCDialOptions) sees.
func OnStreamRetry(fn func(attempt int, err error)) Option {
	return func(o *options) { o.onStreamRetry = fn }
}

// OnLoadRefusal calls fn each time a replica refuses a try of Generate,
// GenerateStream or GenerateWithProgress for load (RESOURCE_EXHAUSTED
// OVERLOADED or QUEUE_FULL, without QuotaFailure), before the client
// decides whether the call moves to another replica: attempt is the
// refused try (1 or more), replica the address of the replica that
// refused (as grpc.Peer reports it), err the refusal. Refusals for a
// tenant's quota are not reported: the call does not move for them.
func OnLoadRefusal(fn func(attempt int, replica string, err error)) Option {
	return func(o *options) { o.onLoadRefusal = fn }
}

// WithGRPCDialOptions adds grpc-go dial options after the client's own, for
// what the client has no option for: interceptors, a stats handler such as
// OpenTelemetry's otelgrpc.NewClientHandler(), keepalive. An option that
// sets what the client sets (the default service config, say) replaces it.
func WithGRPCDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}
