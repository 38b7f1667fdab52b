package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hourglass-dev/hourglass/client"
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

// runInfo is the info subcommand. With several servers it asks each and
// prints a section per server.
func runInfo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		c      connFlags
		asJSON bool
	)
	fs := newFlagSet("info", "Describe the server: models, styles, limits, workers and queue depth.\nWith several servers, each is asked in turn.", stderr, &c)
	fs.BoolVar(&asJSON, "json", false, "print the answer as JSON (protojson); with several servers, one object keyed by address")
	if err := parseFlags(fs, &c, args); err != nil {
		return err
	}
	addrs := c.addrs.addrs
	if len(addrs) == 1 {
		info, err := serverInfo(ctx, &c, addrs[0])
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

	var (
		failed  []error
		objects = map[string]json.RawMessage{}
	)
	for i, addr := range addrs {
		info, err := serverInfo(ctx, &c, addr)
		if err != nil {
			failed = append(failed, err)
		}
		if asJSON {
			if objects[addr], err = infoJSON(info, err); err != nil {
				return err
			}
			continue
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "== %s\n", addr)
		if err != nil {
			fmt.Fprintf(stdout, "error:    %s\n", failureSummary(err))
			continue
		}
		printInfo(stdout, info)
	}
	if asJSON {
		b, err := json.MarshalIndent(objects, "", "  ")
		if err != nil {
			return localf("encode info: %v", err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
	}
	return reportFailures(failed, len(addrs))
}

// serverInfo asks the server at addr alone, whatever its health.
func serverInfo(ctx context.Context, c *connFlags, addr string) (*hourglassv1.GetServerInfoResponse, error) {
	cl, err := c.connect(addr, client.WithoutHealthCheck())
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	return cl.ServerInfo(ctx)
}

// infoJSON is one server's entry of info --json with several servers: its
// info, or {"error": {"code": "UNAVAILABLE", "message": "..."}}.
func infoJSON(info *hourglassv1.GetServerInfoResponse, callErr error) (json.RawMessage, error) {
	if callErr != nil {
		st := statusOf(callErr)
		b, err := json.Marshal(map[string]map[string]string{"error": {"code": codeName(st.Code()), "message": st.Message()}})
		if err != nil {
			return nil, localf("encode info: %v", err)
		}
		return b, nil
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(info)
	if err != nil {
		return nil, localf("encode info: %v", err)
	}
	return b, nil
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

// runHealth is the health subcommand: the standard grpc.health.v1 Check,
// on each server in turn.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		c       connFlags
		service string
	)
	fs := newFlagSet("health", "Check the server's health with grpc.health.v1 and print the status.\nExit 0 when SERVING, 3 when the server answers another status.\nWith several servers, each is checked and printed as ADDR STATUS; the\nfirst that is not SERVING decides the exit status.", stderr, &c)
	fs.StringVar(&service, "service", "", "service `NAME` to check; empty checks the whole server")
	if err := parseFlags(fs, &c, args); err != nil {
		return err
	}
	addrs := c.addrs.addrs
	if len(addrs) == 1 {
		st, err := checkHealth(ctx, &c, addrs[0], service)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, st)
		if st != healthpb.HealthCheckResponse_SERVING {
			return &notServingError{status: st.String()}
		}
		return nil
	}

	var failed []error
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, addr := range addrs {
		st, err := checkHealth(ctx, &c, addr, service)
		switch {
		case err != nil:
			failed = append(failed, err)
			fmt.Fprintf(tw, "%s\t%s\n", addr, failureSummary(err))
		case st != healthpb.HealthCheckResponse_SERVING:
			failed = append(failed, &notServingError{status: st.String()})
			fallthrough
		default:
			fmt.Fprintf(tw, "%s\t%s\n", addr, st)
		}
	}
	tw.Flush()
	return reportFailures(failed, len(addrs))
}

// checkHealth asks the server at addr alone. The client's own health
// checking is off for it: with it, a server that is not SERVING would
// never be asked, and the answer would be UNAVAILABLE.
func checkHealth(ctx context.Context, c *connFlags, addr, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	cl, err := c.connect(addr, client.WithoutHealthCheck())
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	defer cl.Close()
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	return cl.Health(ctx, service)
}
