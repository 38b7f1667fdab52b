// Command hourglass is the command-line client of an hourglass server: it
// runs text-to-image jobs (generate), describes a server (info) and checks
// its health (health).
//
// Run "hourglass help" for the usage.
//
// It is built on the Go SDK (package client): generate sends the job to
// every --addr given, balanced round-robin over the servers whose health is
// SERVING, and a job that fails UNAVAILABLE (a server gone or draining, a
// worker crashed) before its first image runs again with the same seed,
// on another server when there is one. info and health ask each server in
// turn.
//
// # Exit status
//
// The exit status says how a command ended, so scripts can react without
// parsing messages. A failed call prints "hourglass: CODE_NAME: message" on
// stderr, followed by one indented line per error detail the server sent
// (field violations, retry delay, error reason), and exits with 10 plus the
// numeric gRPC code:
//
//	status  meaning
//	0       success (health: the service is SERVING)
//	1       local error: a file could not be written, a connection could not be set up
//	        (a bad --tls-ca file, say)
//	2       usage error: unknown subcommand, bad flag or flag value
//	3       health: the server answered, but the service is not SERVING
//	11      CANCELLED (also Ctrl-C)
//	12      UNKNOWN (also a code outside the gRPC range, or a stream that ends without its done event)
//	13      INVALID_ARGUMENT
//	14      DEADLINE_EXCEEDED
//	15      NOT_FOUND
//	16      ALREADY_EXISTS
//	17      PERMISSION_DENIED
//	18      RESOURCE_EXHAUSTED
//	19      FAILED_PRECONDITION
//	20      ABORTED
//	21      OUT_OF_RANGE
//	22      UNIMPLEMENTED
//	23      INTERNAL
//	24      UNAVAILABLE
//	25      DATA_LOSS
//	26      UNAUTHENTICATED
//
// With several --addr, info and health print every server's answer on
// stdout, failures included, and exit with the status of the first server
// that failed (or was not SERVING).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses that are not derived from a gRPC code; see the package doc.
const (
	exitOK         = 0
	exitLocal      = 1
	exitUsage      = 2
	exitNotServing = 3
	// exitCodeBase is added to the numeric gRPC code of a failed call.
	exitCodeBase = 10
)

// usage is the top-level help text. Each subcommand's flags are listed by
// "hourglass help SUBCOMMAND" or "hourglass SUBCOMMAND -h".
const usage = `Usage: hourglass SUBCOMMAND [flags]

Subcommands:
  generate  run a text-to-image job and save its images
  info      describe the server: models, styles, limits, workers, queue
  health    check the server's health (exit 0 when SERVING)
  help      print this help, or a subcommand's flags: hourglass help generate

Common flags:
  --addr HOST:PORT    server address; repeatable or comma-separated
                      (default 127.0.0.1:50051): generate balances over the
                      servers, info and health ask each
  --timeout DURATION  deadline of the call (default 30s for generate, 10s for
                      info and health); 0 uses the client library's 60s
  --token TOKEN       bearer token (default $HOURGLASS_TOKEN); needs TLS, or
                      --allow-plaintext-token for loopback or a mesh sidecar
  --tls               TLS, verifying the server with the system's roots
  --tls-ca FILE       TLS, verifying the server with these CA certificates
  --tls-cert FILE     mutual TLS: the client certificate, with --tls-key FILE

Examples:
  hourglass generate --prompt "a lighthouse at dusk" --count 2 -o lighthouse.png
  hourglass generate --addr gpu1:50051,gpu2:50051 --tls-ca ca.pem --prompt "a fox"
  hourglass info --addr gpu1:50051 --json
  hourglass health --addr gpu1:50051

Exit status: 0 success, 1 local error, 2 usage error, 3 not SERVING (health),
10 + gRPC code for a failed call (11 CANCELLED, 13 INVALID_ARGUMENT,
14 DEADLINE_EXCEEDED, 18 RESOURCE_EXHAUSTED, 24 UNAVAILABLE, ...).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal cancels the call, restore the default behaviour
	// so that a second Ctrl-C kills a client that is slow to wind down.
	go func() {
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// subcommands maps each subcommand name to its implementation. A subcommand
// parses its own flags and returns an error that exitStatus turns into the
// process exit status.
var subcommands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"generate": runGenerate,
	"info":     runInfo,
	"health":   runHealth,
}

// run is the whole program minus the process: tests call it with their own
// arguments and writers and check the returned exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		return runHelp(rest, stdout, stderr)
	}
	cmd, ok := subcommands[name]
	if !ok {
		fmt.Fprintf(stderr, "hourglass: unknown subcommand %q\n\n%s", name, usage)
		return exitUsage
	}
	err := cmd(ctx, rest, stdout, stderr)
	if err != nil && !errors.Is(err, errHelp) {
		printError(stderr, err)
	}
	return exitStatus(err)
}

// runHelp prints the top-level usage, or one subcommand's flags.
func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	cmd, ok := subcommands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "hourglass: unknown subcommand %q\n\n%s", args[0], usage)
		return exitUsage
	}
	// Every subcommand prints its flags for -h and returns errHelp.
	if err := cmd(context.Background(), []string{"-h"}, stdout, stdout); !errors.Is(err, errHelp) {
		return exitStatus(err)
	}
	return exitOK
}
