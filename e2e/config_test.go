package e2e

// End-to-end tests of hourglassd's configuration: the defaults, a YAML file,
// HOURGLASS_* environment variables and flags, each overriding the one
// before; and the promise that an unknown key or a bad value, wherever it
// comes from, is an error naming it, with exit status 2 before anything
// listens.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// runResult is what one run of hourglassd left behind.
type runResult struct {
	code           int
	stdout, stderr string
}

// runHourglassd runs hourglassd with args and, besides the test process's
// own environment stripped of HOURGLASS_* variables, env. It is for runs
// that must end by themselves (config errors, --print-config): one still
// running after 30 s is killed and fails the test.
func runHourglassd(t *testing.T, env []string, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "hourglassd"), args...)
	cmd.Env = append(envWithoutHourglass(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := runResult{stdout: stdout.String(), stderr: stderr.String()}
	if ctx.Err() != nil {
		t.Fatalf("hourglassd %q did not exit within 30s (it must exit before serving)\nstderr:\n%s", args, res.stderr)
	}
	if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
		t.Fatalf("run hourglassd %q: %v", args, err)
	}
	res.code = cmd.ProcessState.ExitCode()
	return res
}

// envWithoutHourglass is the test process's environment minus HOURGLASS_*
// variables, which would otherwise reach hourglassd and change what it
// reads.
func envWithoutHourglass() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOURGLASS_") {
			env = append(env, kv)
		}
	}
	return env
}

// writeConfig writes a YAML config file and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hourglass.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// listenedLine is part of the line hourglassd logs once its gRPC port is
// open; a config error must come before it.
const listenedLine = `"msg":"listening"`

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string   // config file contents; "" for no --config
		env  []string // HOURGLASS_* variables
		args []string // flags besides --config and --listen
		// want are substrings of stderr: the key, variable or value at
		// fault, so that an operator knows what to fix.
		want []string
	}{
		{name: "unknown nested key", yaml: "workers:\n  cuont: 2\n", want: []string{"cuont"}},
		{name: "unknown top-level key", yaml: "wrokers:\n  count: 2\n", want: []string{"wrokers"}},
		// yaml.v3 names the value and its line, not the key path.
		{name: "bad duration", yaml: "timeouts: {default: soon}\n", want: []string{"soon", "line 1", "hourglass.yaml"}},
		{name: "bad integer", yaml: "queue:\n  max: many\n", want: []string{"many", "line 2"}},
		{name: "value out of range", yaml: "queue:\n  max: -1\n", want: []string{"queue.max"}},
		{name: "default beyond max", yaml: "timeouts:\n  default: 20m\n  max: 10m\n", want: []string{"timeouts.default", "timeouts.max"}},
		{name: "burst without rate", yaml: "tenants:\n  burst_worker_seconds: 5\n", want: []string{"tenants.worker_seconds_per_second"}},
		{name: "unknown variable", env: []string{"HOURGLASS_WORKRES_COUNT=3"},
			want: []string{"HOURGLASS_WORKRES_COUNT", "did you mean HOURGLASS_WORKERS_COUNT"}},
		{name: "bad variable value", env: []string{"HOURGLASS_WORKERS_COUNT=zero"},
			want: []string{"HOURGLASS_WORKERS_COUNT", "workers.count", `"zero"`}},
		{name: "bad variable duration", env: []string{"HOURGLASS_TIMEOUTS_CANCEL_GRACE=2"},
			want: []string{"HOURGLASS_TIMEOUTS_CANCEL_GRACE", "timeouts.cancel_grace"}},
		{name: "variable out of range", env: []string{"HOURGLASS_WORKERS_COUNT=0"},
			want: []string{"workers.count", "set by HOURGLASS_WORKERS_COUNT"}},
		{name: "flag out of range", args: []string{"--workers", "0"}, want: []string{"workers.count"}},
		{name: "flag out of range over a good file", yaml: "workers:\n  count: 2\n", args: []string{"--workers", "300"},
			want: []string{"workers.count", "300"}},
		{name: "unknown flag", args: []string{"--wrokers", "2"}, want: []string{"wrokers"}},
		{name: "stray argument", args: []string{"serve"}, want: []string{`"serve"`}},
		// Secure default: plaintext only on loopback unless --insecure.
		{name: "plaintext beyond loopback", args: []string{"--listen", "0.0.0.0:0"}, want: []string{"TLS is off", "--insecure"}},
		{name: "missing config file", args: []string{"--config", "/nonexistent/hourglass.yaml"},
			want: []string{"/nonexistent/hourglass.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A port of the kernel's choosing, in case hourglassd wrongly
			// goes on to serve: the test then fails, but takes no fixed
			// port.
			args := []string{"--listen", "127.0.0.1:0"}
			if tt.yaml != "" {
				args = append(args, "--config", writeConfig(t, tt.yaml))
			}
			args = append(args, tt.args...)
			res := runHourglassd(t, tt.env, args...)
			if res.code != 2 {
				t.Fatalf("hourglassd %q (env %q) exit status %d; want 2\nstderr:\n%s", args, tt.env, res.code, res.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(res.stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, res.stderr)
				}
			}
			if strings.Contains(res.stderr, listenedLine) {
				t.Errorf("hourglassd listened before refusing its config:\n%s", res.stderr)
			}
			if res.stdout != "" {
				t.Errorf("stdout = %q; want nothing", res.stdout)
			}
		})
	}
}

// TestConfigPrintPrecedence: --print-config prints the effective config,
// each key from the strongest source that sets it (flag, then environment,
// then file, then the default), durations as strings, and exits 0 without
// starting anything. Its output is itself a config file that gives the
// same config back.
func TestConfigPrintPrecedence(t *testing.T) {
	file := writeConfig(t, `listen: 127.0.0.1:6000   # overridden by the environment
workers:
  count: 3                 # overridden by the environment, then by --workers
  spares: 0                # from the file alone
timeouts:
  default: 45s             # overridden by the environment
  cancel_grace: 500ms      # from the file alone
queue:
  max: 10
metrics:
  listen: 127.0.0.1:9000   # overridden by --metrics-listen
tenants:
  max_concurrent: 4
`)
	env := []string{
		"HOURGLASS_LISTEN=127.0.0.1:6001",
		"HOURGLASS_WORKERS_COUNT=5",
		"HOURGLASS_TIMEOUTS_DEFAULT=90s",
		"HOURGLASS_TENANTS_WORKER_SECONDS_PER_SECOND=0.5",
		"HOURGLASS_TENANTS_BURST_WORKER_SECONDS=30",
	}
	args := []string{"--print-config", "--config", file, "--workers", "7", "--metrics-listen", "127.0.0.1:9100"}
	res := runHourglassd(t, env, args...)
	if res.code != 0 {
		t.Fatalf("hourglassd %q exit status %d; want 0\nstderr:\n%s", args, res.code, res.stderr)
	}
	if strings.Contains(res.stderr, listenedLine) {
		t.Errorf("--print-config listened:\n%s", res.stderr)
	}

	var got map[string]any
	if err := yaml.Unmarshal([]byte(res.stdout), &got); err != nil {
		t.Fatalf("--print-config output is not YAML: %v\n%s", err, res.stdout)
	}
	want := []struct {
		key  string
		val  any
		from string
	}{
		{"listen", "127.0.0.1:6001", "environment over file"},
		{"workers.count", 7, "flag over environment over file"},
		{"workers.spares", 0, "file"},
		{"timeouts.default", "1m30s", "environment over file"},
		{"timeouts.cancel_grace", "500ms", "file"},
		{"timeouts.max", "10m", "default"},
		{"timeouts.heartbeat", "30s", "default"},
		{"queue.max", 10, "file"},
		{"metrics.listen", "127.0.0.1:9100", "flag over file"},
		{"tenants.max_concurrent", 4, "file"},
		{"tenants.worker_seconds_per_second", 0.5, "environment"},
		{"tenants.burst_worker_seconds", 30.0, "environment"},
		{"admission.enabled", true, "default"},
	}
	for _, w := range want {
		v, ok := lookupKey(got, w.key)
		if !ok {
			t.Errorf("printed config has no %s:\n%s", w.key, res.stdout)
			continue
		}
		// Compare as printed, so that 30 and 30.0 or a duration string
		// and its YAML type are judged by what an operator reads; the
		// type check below catches a duration printed as a number.
		if printed, wanted := yamlScalar(t, v), yamlScalar(t, w.val); printed != wanted {
			t.Errorf("%s = %s; want %s (%s)", w.key, printed, wanted, w.from)
		}
	}
	for _, key := range []string{"timeouts.default", "timeouts.max", "timeouts.cancel_grace", "timeouts.heartbeat",
		"timeouts.worker_start", "timeouts.drain", "admission.overhead"} {
		if v, _ := lookupKey(got, key); !isString(v) {
			t.Errorf("%s printed as %T %v; want a duration string like \"30s\"", key, v, v)
		}
	}

	// The output, fed back as the only source, prints the same again.
	again := runHourglassd(t, nil, "--print-config", "--config", writeConfig(t, res.stdout))
	if again.code != 0 || again.stdout != res.stdout {
		t.Errorf("printing the printed config: exit %d, output\n%s\nwant exit 0 and\n%s\nstderr:\n%s",
			again.code, again.stdout, res.stdout, again.stderr)
	}
}

// lookupKey finds a dotted key path in a decoded YAML mapping.
func lookupKey(m map[string]any, key string) (any, bool) {
	var cur any = m
	for _, part := range strings.Split(key, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// yamlScalar renders a scalar the way YAML prints it.
func yamlScalar(t *testing.T, v any) string {
	t.Helper()
	out, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func isString(v any) bool {
	_, ok := v.(string)
	return ok
}
