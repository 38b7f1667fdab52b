// Package client is the Go SDK for calling hourglassd: text-to-image jobs
// with a deadline, balanced over several replicas, retried when a replica
// or a worker dies and moved when a replica is full, with the same images
// after a retry.
//
//	c, err := client.New("gpu1:50051,gpu2:50051,gpu3:50051", client.WithCAFile("ca.pem"), client.WithToken(token))
//	if err != nil { ... }
//	defer c.Close()
//	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
//	defer cancel()
//	resp, err := c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "a lighthouse at dusk"})
//
// A Client is safe for concurrent use and holds the connections to every
// replica: make one per process and share it.
//
// # Targets and balancing
//
// New takes a gRPC target:
//
//   - "host:port" or "dns:///host:port": every address the name resolves to
//     is a replica; gRPC re-resolves the name when a connection fails.
//   - "host1:port1,host2:port2": a fixed list of replicas (a resolver of the
//     client's own, registered on its connection only). Each address is
//     also the TLS server name of its replica.
//   - "xds:///name": replicas from an xDS control plane (Istio, Traffic
//     Director, any Envoy control plane), when the program imports
//     google.golang.org/grpc/xds; see below.
//   - any target of a resolver the program registered ("unix:///path" is
//     built in).
//
// Calls are balanced round-robin over the replicas whose connection is
// ready and whose health (grpc.health.v1, service ServiceName, which
// hourglassd reports) is SERVING. A replica that is starting, draining
// after SIGTERM, or whose workers are all down reports NOT_SERVING and
// gets no new calls until it is SERVING again; one that is unreachable is
// reconnected with backoff in the background. hourglassd's health service
// needs no credentials, so the health checks pass its authentication.
// WithoutHealthCheck turns the checks off, to ask one server about itself
// or for a proxy that does not pass grpc.health.v1 through.
//
// These come from the client's default service config:
//
//	{"loadBalancingConfig": [{"hourglass_round_robin": {}}],
//	 "healthCheckConfig": {"serviceName": "hourglass.v1.GenerateService"},
//	 "methodConfig": [{"name": [{"service": "hourglass.v1.GenerateService"}],
//	   "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
//	     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
//
// hourglass_round_robin is gRPC's round_robin (one pick_first child per
// replica, health-checked as above) with one addition: a call's tries skip
// the replicas that refused that call for load (see below). A resolver
// that supplies a service config of its own (xDS always, DNS when TXT
// records hold one) replaces it.
//
// # Retries and seeds
//
// A try that fails with UNAVAILABLE is tried again, up to WithMaxAttempts
// tries in all (3 by default; 1 turns retries off), after a backoff of
// 100 ms, 200 ms, ... at most 1 s, each times a random factor in
// [0.8, 1.2). The retry goes to the next replica in the rotation. What
// fails with UNAVAILABLE: a replica that is gone (killed, unreachable), a
// worker that crashed mid-job (reason ReasonWorkerCrashed), a server that
// is starting or draining (ReasonDraining).
//
// A retry makes the same images: the client sets a random seed (below
// 2^63) on a request that has none before the first try, on a copy (the
// caller's message is never changed), and every try sends that seed. The
// seed is in the response's stats and in the started event.
//
// grpc-go retries a call only until its response headers arrive. For
// Generate they come with the response, so any UNAVAILABLE failure is
// retried there. For GenerateStream they come with the first event (the
// queued event, at once), so grpc-go retries a stream only when it fails
// before that; the client itself then starts a stream again, with the
// same seed, when it fails with UNAVAILABLE after its first events but
// before its first image, within the same attempt count. The caller sees
// the new attempt's events: queued and started again, progress from the
// first step (OnStreamRetry reports each restart). After an image was
// yielded the failure is returned instead; retry with the seed to get the
// same images.
//
// A call that a replica refuses for its own load moves to another replica
// at once: RESOURCE_EXHAUSTED with reason ReasonOverloaded (the queue
// there would make the job miss its deadline) or ReasonQueueFull (the
// queue there is full), for Generate, and for GenerateStream while the
// stream has had nothing but queued events (the caller then sees the
// queued events of both). The next try goes, without a backoff and with
// the same seed, to the next replica in the rotation that has not refused
// this call: the balancer skips those that have, so no replica is tried
// twice for load, and at most WithMaxAttempts replicas are tried in all (1
// turns moves off too). When every replica has refused the call (with one
// replica, at the first refusal), or the attempts or the deadline are
// spent, the call returns the last refusal as the replica sent it, with
// its RetryInfo: IsOverloaded says how long to wait, and the caller
// decides. OnLoadRefusal reports each refusal and the replica that sent
// it. A refusal for the tenant's own quota (ReasonTenantQuota, or any
// refusal with a QuotaFailure) does not move, as every replica would
// refuse it too, and neither does ReasonOutOfMemory. Under a balancing
// policy from xDS or the resolver, the client cannot choose the replica:
// the call moves to wherever that policy picks, and stops when a replica
// refuses it a second time.
//
// Retries and moves share the call's deadline: every try is sent with
// what is left of it, and a call never outlives it.
//
// # Deadlines
//
// Every call has a deadline. A context without one gets the client's
// default timeout, DefaultTimeout (60 s, hourglassd's own default), or the
// one set WithDefaultTimeout; with WithDefaultTimeout(0) the client
// refuses such a call with ErrNoDeadline instead. hourglassd caps every
// deadline at its timeouts.max, answers DEADLINE_EXCEEDED at once when a
// job cannot finish in time (ReasonDeadlineTooShort), at the job's latest
// start when an admitted job can no longer finish because a worker overran
// its plan (ReasonDeadlineUnreachable; the job never ran), and at the
// deadline otherwise.
//
// # Security
//
// By default the client uses TLS and verifies servers with the system's
// roots. WithCAFile trusts a private CA instead, WithClientCertificate adds
// a client certificate (mutual TLS: hourglassd with tls.client_ca names the
// tenant after its common name), and WithTLSConfig takes a whole
// crypto/tls configuration. WithInsecure connects in plain text, for a
// server on loopback or behind a mesh sidecar that encrypts.
//
// WithToken sends "authorization: Bearer TOKEN" with every call
// (hourglassd with auth.tokens_file). The token goes only over TLS: with
// WithInsecure, New fails unless AllowTokenOverPlaintext is also given,
// which is for loopback or a sidecar that encrypts the hop.
//
// # Streaming
//
// GenerateStream returns an iterator over the job's events (queued,
// started, progress, previews when asked for, each image, done):
//
//	for ev, err := range c.GenerateStream(ctx, req) {
//		if err != nil { ... } // the job failed; the loop ends
//		if p := ev.GetProgress(); p != nil { ... }
//	}
//
// Breaking out of the loop cancels the job on the server.
// GenerateWithProgress streams the job, calls a function with each event,
// and returns the images and stats as Generate does. Streaming also
// sidesteps message size limits: each image is a message of its own,
// while Generate returns all of them in one. The client accepts messages
// up to DefaultMaxRecvMsgSize (256 MiB, gRPC's default is 4 MiB), or
// WithMaxRecvMsgSize.
//
// # Errors
//
// The errors are gRPC status errors; the helpers read them:
//
//	status              reason (Reason)         details          helper
//	DEADLINE_EXCEEDED   DEADLINE_EXCEEDED       steps done       IsDeadlineExceeded
//	DEADLINE_EXCEEDED   DEADLINE_TOO_SHORT      estimate         IsDeadlineExceeded
//	DEADLINE_EXCEEDED   DEADLINE_UNREACHABLE    estimate         IsDeadlineExceeded
//	RESOURCE_EXHAUSTED  QUEUE_FULL, OVERLOADED  RetryInfo,       IsOverloaded, IsRetryable
//	                                            (moved)
//	RESOURCE_EXHAUSTED  TENANT_QUOTA_EXCEEDED   RetryInfo,       IsOverloaded, IsRetryable,
//	                                            QuotaFailure     QuotaViolations
//	RESOURCE_EXHAUSTED  WORKER_OUT_OF_MEMORY                     (ask for less)
//	UNAVAILABLE         WORKER_CRASHED,         (retried)        IsRetryable
//	                    SERVER_DRAINING
//	INVALID_ARGUMENT                            BadRequest       FieldViolations
//	NOT_FOUND                                                    (unknown model)
//	UNAUTHENTICATED                                              (token, certificate)
//
// Code and ErrorMetadata give the code and the ErrorInfo metadata of any
// error, context errors included.
//
// # xDS
//
// To take the replicas and the balancing and retry policies from an xDS
// control plane, import grpc-go's xds package in the main package (it is
// large, so the client does not import it), point GRPC_XDS_BOOTSTRAP at a
// bootstrap file (a service mesh injects one), and use an xds target:
//
//	import _ "google.golang.org/grpc/xds"
//
//	c, err := client.New("xds:///hourglass.example.internal", client.WithInsecure())
//
// The balancing and retry policy are then the control plane's (the
// default service config above does not apply), and so is health:
// endpoints the control plane reports unhealthy get no calls. The seed,
// the default deadline, the stream restarts and the moves after a
// refusal for load still apply, the moves to wherever the control plane
// picks. WithInsecure
// fits a mesh whose sidecars encrypt; with xDS-managed security use
// WithGRPCDialOptions and grpc-go's xds credentials.
//
// # Observability
//
// WithGRPCDialOptions adds grpc-go dial options, such as OpenTelemetry's
// stats handler, which joins the client's spans to hourglassd's trace:
//
//	client.WithGRPCDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler()))
//
// A stats handler sees every try, retries included.
package client
