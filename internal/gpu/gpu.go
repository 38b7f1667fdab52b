// Package gpu reads GPU memory through NVML (the NVIDIA driver's
// libnvidia-ml.so, loaded at run time). Where the library is absent — every
// machine without an NVIDIA driver, CI included — it reports nothing and
// says nothing: hourglass runs the same with or without GPUs.
package gpu

import (
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Device is one GPU's memory.
type Device struct {
	Index       int
	Name        string
	MemoryTotal uint64
	MemoryUsed  uint64
}

// Snapshot is the GPUs and the device memory each process holds.
type Snapshot struct {
	Devices []Device
	// ProcessMemory is device memory by process id, summed over devices.
	ProcessMemory map[int]uint64
}

// Monitor reads snapshots; the zero value and a Monitor without NVML read
// empty ones.
type Monitor struct {
	mu sync.Mutex
	ok bool
}

// Open loads NVML if it is there.
func Open() *Monitor {
	m := &Monitor{}
	if ret := nvml.Init(); ret == nvml.SUCCESS {
		m.ok = true
	}
	return m
}

// Available reports whether NVML loaded.
func (m *Monitor) Available() bool { return m != nil && m.ok }

// Snapshot reads every device; errors on one device skip that device.
func (m *Monitor) Snapshot() Snapshot {
	snap := Snapshot{ProcessMemory: map[int]uint64{}}
	if !m.Available() {
		return snap
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return snap
	}
	for i := range count {
		dev, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		d := Device{Index: i}
		d.Name, _ = dev.GetName()
		if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
			d.MemoryTotal, d.MemoryUsed = mem.Total, mem.Used
		}
		snap.Devices = append(snap.Devices, d)
		if procs, ret := dev.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
			for _, p := range procs {
				snap.ProcessMemory[int(p.Pid)] += p.UsedGpuMemory
			}
		}
	}
	return snap
}

// Close unloads NVML.
func (m *Monitor) Close() {
	if m.Available() {
		m.mu.Lock()
		defer m.mu.Unlock()
		_ = nvml.Shutdown()
		m.ok = false
	}
}
