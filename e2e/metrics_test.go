package e2e

// End-to-end test of the Prometheus page (--metrics-listen) after a mixed
// run: every instrument hourglass promises, read back as a scraper would.
//
// The OpenTelemetry Prometheus exporter renders an instrument's name with
// "_" for ".", its unit as a suffix ("s" becomes _seconds) and counters with
// _total: hourglass.jobs is hourglass_jobs_total, hourglass.queue.wait is
// hourglass_queue_wait_seconds (a histogram), and so on. Every series also
// carries otel_scope_* labels, so series are matched here by a subset of
// their labels.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// Metric names as the Prometheus page shows them.
const (
	metricJobs      = "hourglass_jobs_total"
	metricQueueWait = "hourglass_queue_wait_seconds"
	metricRunTime   = "hourglass_job_run_time_seconds"
	metricDepth     = "hourglass_queue_depth"
	metricWorkers   = "hourglass_workers"
	metricKills     = "hourglass_worker_kills_total"
	metricRespawns  = "hourglass_worker_respawns_total"
	metricRefusals  = "hourglass_admission_refusals_total"
	metricThrottles = "hourglass_tenant_throttles_total"
	metricRPCServer = "rpc_server_call_duration_seconds"
)

// Fault injection, as the built-in worker understands it (see
// cmd/hourglass-worker): the flag lets the metadata key through.
const (
	unsafeFaultsFlag = "--unsafe-fault-injection"
	faultHeader      = "hourglass-fault"
)

// withTestFault adds a test fault to the calls made with ctx.
func withTestFault(ctx context.Context, fault string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, faultHeader, fault)
}

// metricsAddr is the address hourglassd's metrics listener logged.
func (d *daemon) metricsAddr() string {
	d.t.Helper()
	var addr string
	waitFor(d.t, 10*time.Second, "the metrics listener's address in the log", func() bool {
		for _, rec := range logRecords(d, "metrics listening") {
			if a, ok := rec["addr"].(string); ok && a != "" {
				addr = a
				return true
			}
		}
		return false
	})
	return addr
}

// logRecords are hourglassd's JSON log lines with message msg.
func logRecords(d *daemon, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.Logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// metricsPage is one scrape, by metric family name.
type metricsPage map[string]*dto.MetricFamily

// scrape GETs /metrics from addr and parses the text format.
func scrape(t *testing.T, addr string) metricsPage {
	t.Helper()
	// No keep-alive: the connection must not outlive the test (goleak).
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value sums the series of family name whose labels include labels: the
// value of a counter or gauge, the sample count of a histogram. ok is false
// when no series matches.
func (p metricsPage) value(name string, labels map[string]string) (sum float64, ok bool) {
	fam := p[name]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		ok = true
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, ok
}

// count is value, 0 when no series matches.
func (p metricsPage) count(name string, labels map[string]string) float64 {
	v, _ := p.value(name, labels)
	return v
}

// labelValues lists the values label takes in family name.
func (p metricsPage) labelValues(name, label string) []string {
	var out []string
	for _, m := range p[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// expectation is one assertion about the metrics page.
type expectation struct {
	what string
	ok   func(metricsPage) bool
}

// waitMetrics scrapes until every expectation holds; on timeout it fails
// naming those that do not, with the hourglass part of the page. Outcomes
// are counted when the server's handler returns, a moment after the caller
// has its answer, and kills and respawns in the background: hence polling.
func waitMetrics(t *testing.T, addr string, timeout time.Duration, exps []expectation) metricsPage {
	t.Helper()
	var page metricsPage
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		page = scrape(t, addr)
		var failed []string
		for _, e := range exps {
			if !e.ok(page) {
				failed = append(failed, e.what)
			}
		}
		if len(failed) == 0 {
			return page
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the metrics page still fails:\n  %s\n%s", timeout, strings.Join(failed, "\n  "), page.hourglassText())
		}
		<-tick.C
	}
}

// hourglassText is the hourglass_* part of the page, for failure messages.
func (p metricsPage) hourglassText() string {
	var b strings.Builder
	for name, fam := range p {
		if !strings.HasPrefix(name, "hourglass_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				if !strings.HasPrefix(l.GetName(), "otel_scope_") {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
			}
			v, _ := metricsPage{name: &dto.MetricFamily{Metric: []*dto.Metric{m}}}.value(name, nil)
			fmt.Fprintf(&b, "%s{%s} %v\n", name, strings.Join(labels, ","), v)
		}
	}
	return b.String()
}

func eq(name string, labels map[string]string, want float64) expectation {
	return expectation{fmt.Sprintf("%s%v == %v", name, labels, want), func(p metricsPage) bool {
		v, ok := p.value(name, labels)
		return ok && v == want
	}}
}

func atLeast(name string, labels map[string]string, want float64) expectation {
	return expectation{fmt.Sprintf("%s%v >= %v", name, labels, want), func(p metricsPage) bool {
		v, ok := p.value(name, labels)
		return ok && v >= want
	}}
}

func TestMetricsAfterMixedRun(t *testing.T) {
	// One slot with a hot spare, and a configured admission rate (no
	// start-up calibration, whose jobs never reach the metrics anyway).
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 1\n"+
		"admission:\n  seconds_per_megapixel_step: 0.05\n"+
		// The slow job's deadline is the server's default, so that the
		// server, not a race with the caller's cancellation, decides its
		// outcome (see TestMetricsCallerDeadlineCounted for the caller's).
		"timeouts:\n  cancel_grace: 500ms\n  default: 500ms\n",
		unsafeFaultsFlag, "--metrics-listen", "127.0.0.1:0")
	addr := d.metricsAddr()
	// call makes one Generate call with a deadline of timeout, or none when
	// timeout is 0 (the server's default applies; a safety net of a
	// minute keeps a broken server from hanging the test).
	call := func(name string, timeout time.Duration, fault string, req *hourglassv1.GenerateRequest, want codes.Code) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		} else {
			safety := time.AfterFunc(time.Minute, cancel)
			defer safety.Stop()
		}
		if fault != "" {
			ctx = withTestFault(ctx, fault)
		}
		if _, err := d.client.Generate(ctx, req); status.Code(err) != want {
			t.Fatalf("Generate(%s) = %v; want %v\n%s", name, err, want, d.Logs())
		}
	}
	slowSteps := &hourglassv1.GenerateRequest{Prompt: "a slow lighthouse", Seed: proto.Uint64(1),
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(20)}
	invalid := smallRequest("seven pixels wide", 1)
	invalid.Width = proto.Uint32(7)

	// The order matters: only a completed job teaches the estimator, so
	// the failures come first, while admission still uses the configured
	// rate (20 slow steps estimate at 12 ms; the heavy job at 31 s).
	call("slow steps past the server's 500ms default deadline", 0, "slow=100ms", slowSteps, codes.DeadlineExceeded)
	call("heavy job, 2s deadline", 2*time.Second, "", heavyRequest(), codes.DeadlineExceeded)
	call("crash", 20*time.Second, "crash", smallRequest("a crash", 2), codes.Unavailable)
	call("ok #1", 20*time.Second, "", smallRequest("a fox", 3), codes.OK)
	call("ok #2", 20*time.Second, "", smallRequest("a whale", 4), codes.OK)
	call("width 7", 20*time.Second, "", invalid, codes.InvalidArgument)

	generate := map[string]string{"rpc_method": "hourglass.v1.GenerateService/Generate"}
	page := waitMetrics(t, addr, 15*time.Second, []expectation{
		// Outcomes of the calls that reached the executor: the deadline
		// mid-run and the admission refusal are both DEADLINE_EXCEEDED.
		eq(metricJobs, map[string]string{"code": "OK"}, 2),
		eq(metricJobs, map[string]string{"code": "DeadlineExceeded"}, 2),
		eq(metricJobs, map[string]string{"code": "Unavailable"}, 1),
		eq(metricRefusals, map[string]string{"reason": "too_late"}, 1),
		atLeast(metricKills, map[string]string{"reason": "crashed"}, 1),
		atLeast(metricRespawns, nil, 1),
		// Four jobs reached a worker: the slow one, the crash, two OK.
		eq(metricQueueWait, nil, 4),
		eq(metricRunTime, nil, 4),
		atLeast(metricWorkers, map[string]string{"state": "ready"}, 1),
		eq(metricDepth, nil, 0),
		// otelgrpc's server metrics see every call, the invalid one too.
		atLeast(metricRPCServer, generate, 6),
		eq(metricRPCServer, map[string]string{"rpc_method": generate["rpc_method"], "rpc_response_status_code": "INVALID_ARGUMENT"}, 1),
		eq(metricRPCServer, map[string]string{"rpc_method": generate["rpc_method"], "rpc_response_status_code": "OK"}, 2),
	})

	// INVALID_ARGUMENT never reaches the executor: validation refuses it
	// in an interceptor, and hourglass.jobs counts only what ran the
	// handler's job path (server/service.go).
	for _, code := range page.labelValues(metricJobs, "code") {
		switch code {
		case "OK", "DeadlineExceeded", "Unavailable":
		default:
			t.Errorf("%s has code %q; want only OK, DeadlineExceeded and Unavailable (invalid requests are not jobs)", metricJobs, code)
		}
	}
	if refusals := page.labelValues(metricRefusals, "reason"); len(refusals) != 1 {
		t.Errorf("%s reasons = %q; want only too_late", metricRefusals, refusals)
	}
	// The crash was the only kill; the cooperative slow worker was not.
	if kills := page.labelValues(metricKills, "reason"); len(kills) != 1 || kills[0] != "crashed" {
		t.Errorf("%s reasons = %q; want only crashed", metricKills, kills)
	}
	for _, name := range []string{metricWorkers, metricDepth} {
		if fam := page[name]; fam.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s is %v; want a gauge", name, fam.GetType())
		}
	}
	for _, name := range []string{metricQueueWait, metricRunTime, metricRPCServer} {
		if fam := page[name]; fam.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("%s is %v; want a histogram", name, fam.GetType())
		}
	}
	// No tenant limits are configured: nothing is throttled.
	if _, ok := page.value(metricThrottles, nil); ok {
		t.Errorf("%s has series without tenant limits", metricThrottles)
	}
}

// TestMetricsOffByDefault: without --metrics-listen nothing serves metrics.
func TestMetricsOffByDefault(t *testing.T) {
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 0\nadmission:\n  seconds_per_megapixel_step: 0.05\n")
	if recs := logRecords(d, "metrics listening"); len(recs) != 0 {
		t.Fatalf("hourglassd started a metrics listener without --metrics-listen: %v", recs)
	}
}

// TestMetricsCallerDeadlineCounted: a job cut by its caller's own deadline
// (grpc-timeout) is counted, logged and traced as DEADLINE_EXCEEDED, never
// as CANCELLED. grpc-go usually ends the handler's context with Canceled in
// that case, because the caller's RST_STREAM arrives first; and the server's
// idea of the deadline is the caller's timeout from when the request
// arrived, a little later than the caller's own. Each call is one roll of
// that race, hence several.
func TestMetricsCallerDeadlineCounted(t *testing.T) {
	const calls = 20
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 0\nadmission:\n  seconds_per_megapixel_step: 0.05\n",
		unsafeFaultsFlag, "--metrics-listen", "127.0.0.1:0")
	addr := d.metricsAddr()
	req := &hourglassv1.GenerateRequest{Prompt: "a slow lighthouse", Seed: proto.Uint64(1),
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(20)}
	for i := range calls {
		ctx, cancel := context.WithTimeout(withTestFault(context.Background(), "slow=50ms"), 200*time.Millisecond)
		_, err := d.client.Generate(ctx, req)
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("Generate(slow, 200ms) #%d = %v; want DEADLINE_EXCEEDED", i+1, err)
		}
	}
	method := "hourglass.v1.GenerateService/Generate"
	// On a loaded machine a call may die of its deadline in grpc-go's
	// transport before the handler runs (it is then no job, but still an
	// rpc DEADLINE_EXCEEDED); what matters is that no call the server saw
	// is counted CANCELLED. Wait until every call the server logged is
	// counted.
	logged := func() int {
		n := 0
		for _, rec := range logRecords(d, "grpc call") {
			if rec["method"] == "/"+method {
				n++
			}
		}
		return n
	}
	waitFor(t, 15*time.Second, "every logged call on the metrics page", func() bool {
		n := logged()
		page := scrape(t, addr)
		return n >= calls/2 && page.count(metricJobs, nil) >= float64(n) &&
			page.count(metricRPCServer, map[string]string{"rpc_method": method}) >= float64(n)
	})
	page := scrape(t, addr)
	total := page.count(metricJobs, nil)
	rpcTotal := page.count(metricRPCServer, map[string]string{"rpc_method": method})
	var outcomes []string
	for _, rec := range logRecords(d, "grpc call") {
		if rec["method"] == "/"+method {
			outcomes = append(outcomes, fmt.Sprint(rec["code"]))
		}
	}
	jobs := page.count(metricJobs, map[string]string{"code": "DeadlineExceeded"})
	rpcs := page.count(metricRPCServer, map[string]string{"rpc_method": method, "rpc_response_status_code": "DEADLINE_EXCEEDED"})
	if jobs != total || rpcs != rpcTotal || rpcs < calls/2 {
		t.Errorf("of %d calls cut by the caller's deadline, %s counts %v of %v as DeadlineExceeded and %s %v of %v; want all\n"+
			"call log codes: %q\n%s", calls, metricJobs, jobs, total, metricRPCServer, rpcs, rpcTotal, outcomes, page.hourglassText())
	}
}
