package server

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// registerGPUMetrics exposes GPU memory per device and per worker, read
// from NVML at collection time. Without NVML the gauges report nothing.
func registerGPUMetrics(m metric.Meter, svc *generateService) error {
	total, err := m.Int64ObservableGauge("hourglass.gpu.memory.total", metric.WithUnit("By"),
		metric.WithDescription("Device memory of each GPU (NVML)."))
	if err != nil {
		return err
	}
	used, err := m.Int64ObservableGauge("hourglass.gpu.memory.used", metric.WithUnit("By"),
		metric.WithDescription("Device memory in use on each GPU, by any process (NVML)."))
	if err != nil {
		return err
	}
	perWorker, err := m.Int64ObservableGauge("hourglass.worker.gpu.memory", metric.WithUnit("By"),
		metric.WithDescription("Device memory held by each worker process (NVML)."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if !svc.gpus.Available() {
			return nil
		}
		snap := svc.gpus.Snapshot()
		for _, d := range snap.Devices {
			attrs := metric.WithAttributes(attribute.String("gpu", strconv.Itoa(d.Index)), attribute.String("name", d.Name))
			o.ObserveInt64(total, int64(d.MemoryTotal), attrs)
			o.ObserveInt64(used, int64(d.MemoryUsed), attrs)
		}
		if e := svc.exec.Load(); e != nil {
			for _, w := range e.Status().Workers {
				if w.PID != 0 {
					o.ObserveInt64(perWorker, int64(snap.ProcessMemory[w.PID]),
						metric.WithAttributes(attribute.String("worker", w.ID), attribute.String("gpu", w.GPU)))
				}
			}
		}
		return nil
	}, total, used, perWorker)
	return err
}
