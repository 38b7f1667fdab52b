package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// defaultQueryTimeout bounds info and health calls, which answer at once on
// a healthy server; a probe that waits longer hides the problem it checks.
const defaultQueryTimeout = 10 * time.Second

// newFlagSet makes a subcommand's flag set with the shared flags and a usage
// text; extra flags are added by the caller.
func newFlagSet(name, synopsis string, out io.Writer, c *connFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	c.register(fs, defaultQueryTimeout)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: hourglass %s [flags]\n\n%s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and checks the shared flags, turning flag errors
// into usage errors.
func parseFlags(fs *flag.FlagSet, c *connFlags, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return &usageError{msg: fs.Name() + ": " + err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return c.check()
}

// runInfo is the info subcommand.
func runInfo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		c      connFlags
		asJSON bool
	)
	fs := newFlagSet("info", "Describe the server: models, styles, limits, workers and queue depth.", stderr, &c)
	fs.BoolVar(&asJSON, "json", false, "print the answer as JSON (protojson)")
	if err := parseFlags(fs, &c, args); err != nil {
		return err
	}
	conn, err := c.connect()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := c.callContext(ctx)
	defer cancel()

	info, err := hourglassv1.NewGenerateServiceClient(conn).GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
	if err != nil {
		return err
	}
	if asJSON {
		b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(info)
		if err != nil {
			return localf("encode info: %v", err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	printInfo(stdout, info)
	return nil
}

// printInfo writes info for a person to read.
func printInfo(w io.Writer, info *hourglassv1.GetServerInfoResponse) {
	fmt.Fprintf(w, "version:  %s\n", info.GetVersion())
	var models []string
	for _, m := range info.GetModels() {
		name := m.GetName()
		if m.GetDefault() {
			name += " (default)"
		}
		models = append(models, name)
	}
	fmt.Fprintf(w, "models:   %s\n", orNone(strings.Join(models, ", ")))
	fmt.Fprintf(w, "styles:   %s\n", orNone(strings.Join(info.GetStyles(), ", ")))
	l := info.GetLimits()
	fmt.Fprintf(w, "limits:   max cost %d pixel-steps, default timeout %v, max timeout %v, max queue %d\n",
		l.GetMaxCostPixelSteps(), l.GetDefaultTimeout().AsDuration(), l.GetMaxTimeout().AsDuration(), l.GetMaxQueue())
	fmt.Fprintf(w, "queue:    %d waiting\n", info.GetQueueDepth())
	fmt.Fprintf(w, "workers:  %d\n", len(info.GetWorkers()))
	if len(info.GetWorkers()) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSTATE\tPID\tDEVICE\tJOBS\tRESTARTS")
	for _, wk := range info.GetWorkers() {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\t%d\n", wk.GetId(), workerState(wk.GetState()),
			wk.GetPid(), wk.GetDevice(), wk.GetJobsDone(), wk.GetRestarts())
	}
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// workerState is the short lower-case name of a state: "busy".
func workerState(s hourglassv1.WorkerState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "WORKER_STATE_"))
}

// runHealth is the health subcommand: the standard grpc.health.v1 Check.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		c       connFlags
		service string
	)
	fs := newFlagSet("health", "Check the server's health with grpc.health.v1 and print the status.\nExit 0 when SERVING, 3 when the server answers another status.", stderr, &c)
	fs.StringVar(&service, "service", "", "service `NAME` to check; empty checks the whole server")
	if err := parseFlags(fs, &c, args); err != nil {
		return err
	}
	conn, err := c.connect()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := c.callContext(ctx)
	defer cancel()

	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return err
	}
	st := resp.GetStatus()
	fmt.Fprintln(stdout, st)
	if st != healthpb.HealthCheckResponse_SERVING {
		return &notServingError{status: st.String()}
	}
	return nil
}
