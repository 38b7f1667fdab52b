package gpu

import (
	"os"
	"testing"
)

// Without NVML (no NVIDIA driver, as in CI) the monitor is quietly empty;
// with it, every device has a name and a total.
func TestSnapshot(t *testing.T) {
	m := Open()
	defer m.Close()
	snap := m.Snapshot()
	if !m.Available() {
		if len(snap.Devices) != 0 || len(snap.ProcessMemory) != 0 {
			t.Fatalf("Snapshot() without NVML = %+v; want empty", snap)
		}
		if _, err := os.Stat("/dev/nvidia0"); err == nil {
			t.Log("an NVIDIA device exists but NVML did not load")
		}
		return
	}
	for _, d := range snap.Devices {
		if d.Name == "" || d.MemoryTotal == 0 || d.MemoryUsed > d.MemoryTotal {
			t.Errorf("device %+v; want a name and used <= total > 0", d)
		}
	}
}

func TestZeroMonitor(t *testing.T) {
	var m *Monitor
	if m.Available() || len(m.Snapshot().Devices) != 0 {
		t.Fatal("a nil Monitor reported GPUs")
	}
	m.Close()
}
