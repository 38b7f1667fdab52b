package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadEnv(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		change  func(*Config) // what the variables do to Default()
	}{
		{name: "none", environ: nil, change: func(c *Config) {}},
		{name: "string", environ: []string{"HOURGLASS_LISTEN=[::1]:6000"}, change: func(c *Config) { c.Listen = "[::1]:6000" }},
		{name: "nested string", environ: []string{"HOURGLASS_AUTH_TOKENS_FILE=/etc/hourglass/tokens"},
			change: func(c *Config) { c.Auth.TokensFile = "/etc/hourglass/tokens" }},
		{name: "key with underscores", environ: []string{"HOURGLASS_TLS_CERT=c.pem", "HOURGLASS_TLS_KEY=k.pem", "HOURGLASS_TLS_CLIENT_CA=ca.pem"},
			change: func(c *Config) { c.TLS = TLS{Cert: "c.pem", Key: "k.pem", ClientCA: "ca.pem"} }},
		{name: "int", environ: []string{"HOURGLASS_WORKERS_COUNT=7"}, change: func(c *Config) { c.Workers.Count = 7 }},
		{name: "uint64", environ: []string{"HOURGLASS_LIMITS_MAX_COST_PIXEL_STEPS=12345678901"},
			change: func(c *Config) { c.Limits.MaxCostPixelSteps = 12345678901 }},
		{name: "int in limits", environ: []string{"HOURGLASS_LIMITS_MAX_METADATA_BYTES=131072"},
			change: func(c *Config) { c.Limits.MaxMetadataBytes = 128 << 10 }},
		{name: "float", environ: []string{"HOURGLASS_ADMISSION_SECONDS_PER_MEGAPIXEL_STEP=0.05"},
			change: func(c *Config) { c.Admission.SecondsPerMegapixelStep = 0.05 }},
		{name: "bool", environ: []string{"HOURGLASS_ADMISSION_ENABLED=false", "HOURGLASS_CANCELLATION_ENABLED=0"},
			change: func(c *Config) { c.Admission.Enabled, c.Cancellation.Enabled = false, false }},
		{name: "duration", environ: []string{"HOURGLASS_TIMEOUTS_DEFAULT=1m30s", "HOURGLASS_TIMEOUTS_DRAIN=250ms"},
			change: func(c *Config) { c.Timeouts.Default, c.Timeouts.Drain = 90*time.Second, 250*time.Millisecond }},
		{name: "list", environ: []string{"HOURGLASS_WORKERS_COMMAND=python3,-m,worker"},
			change: func(c *Config) { c.Workers.Command = []string{"python3", "-m", "worker"} }},
		{name: "list of one", environ: []string{"HOURGLASS_WORKERS_COMMAND=/opt/worker --fast"},
			change: func(c *Config) { c.Workers.Command = []string{"/opt/worker --fast"} }},
		{name: "empty list", environ: []string{"HOURGLASS_WORKERS_COMMAND="}, change: func(c *Config) {}},
		{name: "tenants", environ: []string{"HOURGLASS_TENANTS_MAX_CONCURRENT=3", "HOURGLASS_TENANTS_WORKER_SECONDS_PER_SECOND=1.5",
			"HOURGLASS_TENANTS_BURST_WORKER_SECONDS=90"},
			change: func(c *Config) {
				c.Tenants = Tenants{MaxConcurrent: 3, WorkerSecondsPerSecond: 1.5, BurstWorkerSeconds: 90}
			}},
		{name: "metrics", environ: []string{"HOURGLASS_METRICS_LISTEN=:9090"}, change: func(c *Config) { c.Metrics.Listen = ":9090" }},
		{name: "the later entry wins", environ: []string{"HOURGLASS_WORKERS_COUNT=3", "HOURGLASS_WORKERS_COUNT=4"},
			change: func(c *Config) { c.Workers.Count = 4 }},
		{name: "allowlisted variable is ignored", environ: []string{"HOURGLASS_WORKER_SOCKET=/run/hourglass/w0.sock"}, change: func(c *Config) {}},
		{name: "other variables are ignored", environ: []string{"PATH=/bin", "hourglass_workers_count=9", "OTEL_TRACES_EXPORTER=none", "NOEQUALS"},
			change: func(c *Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := Default()
			tt.change(&want)
			got, err := Load("", tt.environ)
			if err != nil {
				t.Fatalf("Load(\"\", %q) = %v; want no error", tt.environ, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Load(\"\", %q) = %+v; want %+v", tt.environ, got, want)
			}
		})
	}
}

func TestLoadPrecedence(t *testing.T) {
	path := writeFile(t, "workers:\n  count: 3\n  spares: 2\nmetrics:\n  listen: :9090\n")
	environ := []string{"HOURGLASS_WORKERS_COUNT=5", "HOURGLASS_METRICS_LISTEN="}
	got, err := Load(path, environ)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Workers.Count = 5   // file says 3, environment 5
	want.Workers.Spares = 2  // file only
	want.Metrics.Listen = "" // the environment turns off what the file turned on
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Load(file, %q) = %+v; want %+v", environ, got, want)
	}

	// Flags come last, in hourglassd: they change the loaded config, and
	// Validate runs again.
	got.Workers.Count = 0
	if err := got.Validate(); err == nil || !strings.HasPrefix(err.Error(), "workers.count: ") {
		t.Fatalf("Validate() after a flag set workers.count 0 = %v; want a workers.count error", err)
	}
}

func TestLoadEnvErrors(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []string // substrings of the error
	}{
		{name: "typo", environ: []string{"HOURGLASS_WORKERS_CUONT=3"},
			want: []string{"HOURGLASS_WORKERS_CUONT", "not a config key", "did you mean HOURGLASS_WORKERS_COUNT?"}},
		{name: "unrelated name", environ: []string{"HOURGLASS_GPU_MEMORY_FRACTION=0.9"},
			want: []string{"HOURGLASS_GPU_MEMORY_FRACTION", "not a config key", "HOURGLASS_WORKERS_COUNT"}},
		{name: "a section is not a key", environ: []string{"HOURGLASS_WORKERS=3"}, want: []string{"HOURGLASS_WORKERS:", "not a config key"}},
		{name: "old seed name", environ: []string{"HOURGLASS_GENERATION_TIMEOUT=60s"}, want: []string{"HOURGLASS_GENERATION_TIMEOUT"}},
		{name: "bad int", environ: []string{"HOURGLASS_WORKERS_COUNT=three"},
			want: []string{"HOURGLASS_WORKERS_COUNT (workers.count)", `"three" is not a whole number`}},
		{name: "empty int", environ: []string{"HOURGLASS_QUEUE_MAX="}, want: []string{"HOURGLASS_QUEUE_MAX", `"" is not a whole number`}},
		{name: "int overflow", environ: []string{"HOURGLASS_WORKERS_COUNT=99999999999999999999"}, want: []string{"HOURGLASS_WORKERS_COUNT", "out of range"}},
		{name: "negative uint", environ: []string{"HOURGLASS_LIMITS_MAX_COST_PIXEL_STEPS=-1"},
			want: []string{"HOURGLASS_LIMITS_MAX_COST_PIXEL_STEPS", "not a whole number >= 0"}},
		{name: "bad float", environ: []string{"HOURGLASS_TENANTS_WORKER_SECONDS_PER_SECOND=fast"},
			want: []string{"HOURGLASS_TENANTS_WORKER_SECONDS_PER_SECOND", "not a finite number"}},
		{name: "NaN", environ: []string{"HOURGLASS_ADMISSION_SECONDS_PER_MEGAPIXEL_STEP=NaN"},
			want: []string{"HOURGLASS_ADMISSION_SECONDS_PER_MEGAPIXEL_STEP", "not a finite number"}},
		{name: "infinity", environ: []string{"HOURGLASS_TENANTS_BURST_WORKER_SECONDS=+Inf"},
			want: []string{"HOURGLASS_TENANTS_BURST_WORKER_SECONDS", "not a finite number"}},
		{name: "bad bool", environ: []string{"HOURGLASS_ADMISSION_ENABLED=yes"}, want: []string{"HOURGLASS_ADMISSION_ENABLED", "not true or false"}},
		{name: "bad duration", environ: []string{"HOURGLASS_TIMEOUTS_DEFAULT=soon"}, want: []string{"HOURGLASS_TIMEOUTS_DEFAULT", "not a duration"}},
		{name: "duration without unit", environ: []string{"HOURGLASS_TIMEOUTS_DRAIN=30"}, want: []string{"HOURGLASS_TIMEOUTS_DRAIN", "not a duration"}},
		{name: "every bad variable at once", environ: []string{"HOURGLASS_WORKERS_CUONT=3", "HOURGLASS_TIMEOUTS_MAX=long"},
			want: []string{"HOURGLASS_WORKERS_CUONT", "HOURGLASS_TIMEOUTS_MAX"}},
		{name: "valid syntax, invalid setting", environ: []string{"HOURGLASS_WORKERS_COUNT=0"},
			want: []string{"workers.count: 0 is outside 1..256", "(set by HOURGLASS_WORKERS_COUNT)"}},
		{name: "new rule, set by the environment", environ: []string{"HOURGLASS_TIMEOUTS_DRAIN=0s"},
			want: []string{"timeouts.drain", "HOURGLASS_TIMEOUTS_DRAIN"}},
		{name: "TLS half set", environ: []string{"HOURGLASS_TLS_CERT=c.pem"}, want: []string{"tls.key: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("", tt.environ)
			if err == nil {
				t.Fatalf("Load(\"\", %q) = nil error; want one naming %q", tt.environ, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load(\"\", %q) = %q; want it to contain %q", tt.environ, err, w)
				}
			}
		})
	}
}

// TestEnvNames pins the naming rule on the keys the issue names, and checks
// that every Config field has a variable of its own.
func TestEnvNames(t *testing.T) {
	settings, err := settingsOf(reflect.TypeFor[Config]())
	if err != nil {
		t.Fatalf("settingsOf(Config) = %v; every field must be settable from the environment", err)
	}
	got := make(map[string]string) // key -> variable
	for _, s := range settings {
		got[s.key] = s.env
		if _, ok := notSettings[s.env]; ok {
			t.Errorf("%s is both a config variable (%s) and allowlisted as not one", s.env, s.key)
		}
	}
	for key, want := range map[string]string{
		"listen":                               "HOURGLASS_LISTEN",
		"workers.count":                        "HOURGLASS_WORKERS_COUNT",
		"workers.command":                      "HOURGLASS_WORKERS_COMMAND",
		"timeouts.default":                     "HOURGLASS_TIMEOUTS_DEFAULT",
		"timeouts.cancel_grace":                "HOURGLASS_TIMEOUTS_CANCEL_GRACE",
		"auth.tokens_file":                     "HOURGLASS_AUTH_TOKENS_FILE",
		"tls.client_ca":                        "HOURGLASS_TLS_CLIENT_CA",
		"admission.seconds_per_megapixel_step": "HOURGLASS_ADMISSION_SECONDS_PER_MEGAPIXEL_STEP",
		"tenants.burst_worker_seconds":         "HOURGLASS_TENANTS_BURST_WORKER_SECONDS",
		"metrics.listen":                       "HOURGLASS_METRICS_LISTEN",
	} {
		if got[key] != want {
			t.Errorf("variable of %s = %q; want %q", key, got[key], want)
		}
	}
	// Count the leaves independently of settingsOf, so a field it skipped
	// would show.
	var leaves func(reflect.Type) int
	leaves = func(t reflect.Type) int {
		n := 0
		for f := range t.Fields() {
			if f.Type.Kind() == reflect.Struct {
				n += leaves(f.Type)
			} else {
				n++
			}
		}
		return n
	}
	if n := leaves(reflect.TypeFor[Config]()); len(settings) != n {
		t.Errorf("settingsOf(Config) lists %d settings; Config has %d leaf fields", len(settings), n)
	}
}

func TestSettingsOfRefusesMistakes(t *testing.T) {
	type nested struct {
		B int `yaml:"b"`
	}
	tests := []struct {
		name string
		typ  reflect.Type
		want string
	}{
		{name: "unsupported type", typ: reflect.TypeFor[struct {
			M map[string]int `yaml:"labels"`
		}](), want: "labels"},
		{name: "two keys, one variable", typ: reflect.TypeFor[struct {
			AB int    `yaml:"a_b"`
			A  nested `yaml:"a"`
		}](), want: "HOURGLASS_A_B"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := settingsOf(tt.typ); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("settingsOf(%v) = %v; want an error naming %q", tt.typ, err, tt.want)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"COUNT", "CUONT", 2}, {"kitten", "sitting", 3},
	} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d; want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
