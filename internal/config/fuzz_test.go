package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzLoad: whatever a config file holds, Load returns a valid config or an
// error, never panics, and a config it accepts prints to YAML that loads
// back to the same config.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"workers:\n  count: 3\n  gpus: [0, 1]\ntimeouts:\n  default: 300ms\n",
		"admission: {enabled: false}\ncancellation: {enabled: false}\n",
		"tenants: {worker_seconds_per_second: 0.5, burst_worker_seconds: 10}\n",
		"timeouts: {default: soon}\n",
		"wrokers: 1\n",
		"workers: [1, 2]\n",
		"limits: {max_cost_pixel_steps: 18446744073709551615}\n",
		"admission: {seconds_per_megapixel_step: .nan}\n",
		"&a [*a, *a]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, yaml string) {
		dir := t.TempDir()
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path, nil)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load(%q) accepted a config that fails Validate: %v", yaml, err)
		}
		out, err := cfg.YAML()
		if err != nil {
			t.Fatalf("YAML() of an accepted config: %v", err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := Load(path, nil)
		if err != nil {
			t.Fatalf("Load(YAML()) = %v for printed config:\n%s", err, out)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", again, cfg)
		}
	})
}
