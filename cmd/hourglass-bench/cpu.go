package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU is the user plus system CPU time pid has used so far, 0 when it
// cannot be read.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// After the command: state is field 3, utime 14, stime 15.
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * clockTick
}

// cpuSplit is CPU time by role.
type cpuSplit struct{ client, server, workers time.Duration }

func (c cpuSplit) sub(o cpuSplit) cpuSplit {
	return cpuSplit{c.client - o.client, c.server - o.server, c.workers - o.workers}
}

func (c *cpuSplit) add(o cpuSplit) {
	c.client += o.client
	c.server += o.server
	c.workers += o.workers
}

// cpuNow reads the CPU used by this process (the client), the server d and
// its worker processes (hourglassd's; the echo server has none).
func (h *harness) cpuNow(d *daemon, pids []int) cpuSplit {
	c := cpuSplit{client: procCPU(os.Getpid()), server: procCPU(d.pid)}
	for _, p := range pids {
		c.workers += procCPU(p)
	}
	return c
}

// workerPIDs lists the worker processes of a hourglassd, spares included.
func workerPIDs(ctx context.Context, d *daemon) []int {
	info, err := d.info(ctx)
	if err != nil {
		return nil
	}
	var pids []int
	for _, w := range info.GetWorkers() {
		if w.GetPid() > 0 {
			pids = append(pids, int(w.GetPid()))
		}
	}
	return pids
}
