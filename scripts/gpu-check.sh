#!/usr/bin/env bash
# GPU check: proves hourglass's termination promises on a real GPU, with the
# PyTorch worker (python/hourglass_torch) behind the real hourglassd.
#
#   scripts/gpu-check.sh            # from anywhere; finishes in a few minutes
#
# It needs: an NVIDIA GPU with nvidia-smi; a python3 with torch (CUDA),
# grpcio, protobuf and numpy (pillow and nvidia-ml-py are used when there);
# and either Go (it runs `make build`) or the binaries prebuilt in bin/
# (hourglassd), as on a GPU machine without Go: build them elsewhere with
# `make build` and bring bin/ along. Set PYTHON to choose the interpreter.
#
# Steps, each reported:
#   1. environment: GPU, driver, torch, grpcio and protobuf versions; the
#      Python unit tests on this interpreter (the generated code loads on
#      this protobuf; the CUDA tests run);
#   2. hourglassd with two PyTorch CUDA workers on GPU 0 (start-up and
#      calibration timed);
#   3. a table per job size: per-step GPU time (the worker's step, synced)
#      against the executor's overhead per job (server run time minus the
#      worker's compute, decode and encode time);
#   4. a deadline mid-run: DEADLINE_EXCEEDED, and the worker stops at its
#      next step by itself (not killed);
#   5. a worker wedged inside one long CUDA kernel past its deadline (the
#      "hang" test fault): the caller is answered at the deadline, the worker
#      is killed after the cancel grace, GPU memory returns to its pre-job
#      baseline (NVML, else nvidia-smi) within 1 s of the kill, and the time
#      until the pool has its full capacity again (a new worker ready);
#   6. SIGTERM: hourglassd exits 0, no worker is left, GPU memory returns to
#      what it was before hourglassd started.
#
# The report goes to stdout and, when $OUT is set, to $OUT/gpu-check.txt with
# the raw logs ($OUT/hourglassd.log, $OUT/gpu-memory.csv). Exit status 0 when
# every check passed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PYTHON:-$(command -v python3)}
# DRY=1 rehearses the script without a GPU (numpy workers, no memory checks),
# to check the script itself on a machine without one.
DRY=${DRY:-0}
if command -v go >/dev/null 2>&1; then
  echo "--- building (make build)"
  make build
fi
if [ ! -x bin/hourglassd ]; then
  echo "gpu-check: bin/hourglassd missing and no Go to build it: run 'make build' on a machine with Go and bring bin/" >&2
  exit 2
fi
need='import grpc, google.protobuf, numpy'
[ "$DRY" = 1 ] || need="$need, torch"
if ! "$PY" -c "$need" 2>/dev/null; then
  echo "gpu-check: $PY cannot '$need' (set PYTHON)" >&2
  exit 2
fi
WORK=$(mktemp -d -t hourglass-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "--- Python unit tests on $PY"
unit_status=0
(cd python && PYTHONUNBUFFERED=1 timeout 300 "$PY" -m unittest discover -s tests -t .) >"$WORK/unittest.log" 2>&1 || unit_status=$?
tail -n 8 "$WORK/unittest.log"

status=0
PYTHONUNBUFFERED=1 ROOT="$ROOT" PY="$PY" WORK="$WORK" OUTDIR="${OUT:-}" UNIT_STATUS="$unit_status" DRY="$DRY" \
  "$PY" - <<'PYEOF' || status=$?
import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT, PY, WORK, OUTDIR = os.environ["ROOT"], os.environ["PY"], os.environ["WORK"], os.environ["OUTDIR"]
DRY = os.environ.get("DRY") == "1"
sys.path.insert(0, os.path.join(ROOT, "python"))

import grpc  # noqa: E402
import google.protobuf  # noqa: E402

from hourglass_worker.proto import generate_pb2, generate_pb2_grpc  # noqa: E402

MiB = 1 << 20
report_lines = []
failures = []


def say(line=""):
    print(line, flush=True)
    report_lines.append(line)


def check(ok, what):
    say(("PASS  " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


# --- GPU memory sampling (NVML in-process, else nvidia-smi) ------------------------


class MemSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []  # (time, used bytes)
        self.stop_flag = threading.Event()
        self.source = "nvidia-smi"
        self.total = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self.h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.nvml = pynvml
            self.source = "NVML"
            self.total = pynvml.nvmlDeviceGetMemoryInfo(self.h).total
        except Exception:  # noqa: BLE001
            self.nvml = None

    def read(self):
        if self.nvml is not None:
            return self.nvml.nvmlDeviceGetMemoryInfo(self.h).used
        out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        used, total = [int(x) for x in out.strip().split(",")]
        self.total = total * MiB
        return used * MiB

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.samples.append((time.time(), self.read()))
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.005)

    def now(self):
        return self.samples[-1][1] if self.samples else self.read()

    def median_since(self, t0):
        vals = sorted(u for t, u in self.samples if t >= t0)
        return vals[len(vals) // 2] if vals else self.now()

    def peak_between(self, t0, t1):
        vals = [u for t, u in self.samples if t0 <= t <= t1]
        return max(vals) if vals else 0

    def first_at_or_below(self, level, after):
        for t, u in list(self.samples):
            if t >= after and u <= level:
                return t
        return None


class DryMem(MemSampler):
    """No GPU: memory reads as 0, so memory checks pass trivially (DRY only)."""

    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.samples, self.stop_flag, self.source, self.total, self.nvml = [], threading.Event(), "none (dry run)", 0, None

    def read(self):
        return 0


# --- hourglassd ------------------------------------------------------------------------


class Daemon:
    def __init__(self, config_path):
        self.records = []  # (arrival time, parsed JSON)
        self.raw = open(os.path.join(WORK, "hourglassd.log"), "w")
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([os.path.join(ROOT, "bin", "hourglassd"), "--config", config_path,
                                      "--unsafe-fault-injection"], cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        atexit.register(self.ensure_stopped)
        threading.Thread(target=self._read, daemon=True).start()

    def ensure_stopped(self):
        """Whatever happened to the script, hourglassd (and so its workers)
        does not outlive it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _read(self):
        for line in self.proc.stderr:
            t = time.time()
            self.raw.write(line)
            self.raw.flush()
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.records.append((t, rec))

    def find(self, msg, after=0.0, **attrs):
        with self.lock:
            recs = list(self.records)
        return [(t, r) for t, r in recs if t >= after and r.get("msg") == msg
                and all(str(r.get(k)) == str(v) for k, v in attrs.items())]

    def wait(self, msg, timeout, after=0.0, **attrs):
        end = time.time() + timeout
        while time.time() < end:
            found = self.find(msg, after, **attrs)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                return None
            time.sleep(0.005)
        return None


def fmt_ms(s):
    return "%.1f" % (s * 1000.0)


say("hourglass GPU check, %s" % time.strftime("%Y-%m-%d %H:%M:%S %Z"))
say()
say("== 1. environment")
if DRY:
    say("DRY RUN: numpy workers on the CPU, no GPU memory checks; this rehearses the script only")
else:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    say(("GPU: %s" % smi.stdout.strip().splitlines()[0]) if smi.stdout.strip() else "GPU: nvidia-smi failed: " + smi.stderr.strip())
    import torch  # noqa: E402

    say("torch %s (CUDA %s, available=%s)" % (torch.__version__, torch.version.cuda, torch.cuda.is_available()))
    check(torch.cuda.is_available(), "torch sees CUDA")
say("python %s; grpcio %s; protobuf %s" % (sys.version.split()[0], grpc.__version__, google.protobuf.__version__))
check(os.environ.get("UNIT_STATUS") == "0", "Python unit tests pass on this interpreter (generated code loads on protobuf %s)"
      % google.protobuf.__version__)

mem = MemSampler() if not DRY else DryMem()
mem.start()
time.sleep(0.3)
mem_before_daemon = mem.median_since(time.time() - 0.25)
say("GPU memory before hourglassd: %.0f MiB used (sampled with %s)" % (mem_before_daemon / MiB, mem.source))

# --- 2. hourglassd with two CUDA workers -------------------------------------------------------
say()
say("== 2. hourglassd with two PyTorch CUDA workers on one GPU")
port = 50000 + os.getpid() % 10000
cfg = os.path.join(WORK, "hourglass.yaml")
with open(cfg, "w") as f:
    f.write("listen: 127.0.0.1:%d\n" % port)
    f.write("workers:\n  count: 2\n  spares: 0\n  command: %s\n" % json.dumps(
        [PY, os.path.join(ROOT, "python", "launch", "hourglass-torch-worker"), "--unsafe-fault-injection"]
        + (["--backend", "numpy"] if DRY else ["--device", "cuda"])))
    f.write("timeouts:\n  worker_start: 180s\n  cancel_grace: 1s\n  heartbeat: 60s\n  default: 60s\n")
    # Admission would refuse the deliberately hopeless jobs of steps 4 and 5
    # at once (DEADLINE_TOO_SHORT); this check is about what happens once a
    # job runs past its deadline. Cancellation stays on.
    f.write("admission:\n  enabled: false\n")
t_start = time.time()
d = Daemon(cfg)
serving = d.wait("serving", 240)
if serving is None:
    say("hourglassd did not serve; its log:")
    say(open(os.path.join(WORK, "hourglassd.log")).read()[-4000:])
    check(False, "hourglassd serves with two CUDA workers")
    sys.exit(1)
ready = d.find("worker process ready")
say("serving after %.1f s (two workers started: Python, torch import, CUDA context, weights)" % (serving[0] - t_start))
for t, r in ready:
    say("  worker %s pid %s device %s ready after %.1f s" % (r.get("process"), r.get("pid"), r.get("device"), t - t_start))
check(len(ready) == 2 and all(DRY or str(r.get("device", "")).startswith("cuda") for _, r in ready), "two workers on CUDA")

channel = grpc.insecure_channel("127.0.0.1:%d" % port, options=[("grpc.max_receive_message_length", 256 << 20)])
stub = generate_pb2_grpc.GenerateServiceStub(channel)


def request(w, h, steps, n, seed=1):
    return generate_pb2.GenerateRequest(prompt="a lighthouse in a storm", width=w, height=h, steps=steps,
                                        image_count=n, seed=seed)


def info():
    return stub.GetServerInfo(generate_pb2.GetServerInfoRequest(), timeout=10)


# --- 3. per-step GPU time against executor overhead --------------------------------------------------
say()
say("== 3. per-step GPU time against executor overhead (each size run twice; the second is shown)")
say("%-16s %5s %5s | %9s %10s %9s %9s | %10s %11s %12s %10s" % (
    "size", "imgs", "steps", "step GPU", "compute", "decode", "encode", "run time", "overhead", "overhead/st", "client"))
say("%-16s %5s %5s | %9s %10s %9s %9s | %10s %11s %12s %10s" % ("", "", "", "ms", "ms", "ms", "ms", "ms", "ms", "ms", "ms"))
sizes = [(512, 512, 30, 1), (1024, 1024, 30, 1), (1024, 1024, 30, 4), (2048, 2048, 20, 1), (1024, 1024, 8, 16)]
if DRY:
    sizes = [(256, 256, 10, 1), (512, 512, 10, 2)]
step_ms = {}
for (w, h, steps, n) in sizes:
    row = None
    for attempt in range(2):
        t0 = time.time()
        resp = stub.Generate(request(w, h, steps, n), timeout=120)
        client = time.time() - t0
        timings = d.wait("synthetic diffusion timings", 10, after=t0)
        if timings is None:
            break
        tr = timings[1]
        run = resp.stats.run_time.seconds + resp.stats.run_time.nanos / 1e9
        worker_ms = tr["compute_ms"] + tr["decode_ms"] + tr["encode_ms"]
        overhead = run * 1000 - worker_ms
        row = (tr["step_ms_mean"], tr["compute_ms"], tr["decode_ms"], tr["encode_ms"], run * 1000, overhead,
               overhead / (steps * 1.0), client * 1000)
    if row is None:
        check(False, "timings for %dx%d x%d" % (w, h, n))
        continue
    step_ms[(w, h, n)] = row[0]
    say("%-16s %5d %5d | %9.2f %10.1f %9.1f %9.1f | %10.1f %11.1f %12.3f %10.1f" % (("%dx%d" % (w, h), n, steps) + row))
say("step GPU: mean time of one denoising step of the whole batch, synchronised; compute: all steps; overhead: "
    "server run time minus the worker's compute+decode+encode (gRPC, progress events, image transfer, dispatch)")

# --- 4. a deadline mid-run: cooperative stop ---------------------------------------------------------
say()
say("== 4. deadline mid-run: the worker stops at its next step")
pids_before = {w.id: w.pid for w in info().workers}
# A job that needs well over its deadline (within the cost ceiling of 2^30
# pixel-steps): the deadline falls at about a quarter of its expected run time.
w4, h4, steps4, n4 = (512, 512, 150, 1) if DRY else (2048, 2048, 60, 4)
one = step_ms.get((2048, 2048, 1)) if not DRY else step_ms.get((512, 512, 2), 20.0) / 2
expected = (one or 10.0) * (n4 if not DRY else 1) * steps4 / 1000.0
deadline = max(0.3, 0.25 * expected)
say("job %dx%d x%d, %d steps, expected %.2f s; deadline %.2f s" % (w4, h4, n4, steps4, expected, deadline))
t0 = time.time()
try:
    stub.Generate(request(w4, h4, steps4, n4, seed=3), timeout=deadline)
    code = grpc.StatusCode.OK
except grpc.RpcError as e:
    code = e.code()
t_answer = time.time() - t0
check(code == grpc.StatusCode.DEADLINE_EXCEEDED and t_answer < deadline + 0.2,
      "%s after %.3f s (deadline %.2f s)" % (code.name, t_answer, deadline))
stopped = d.wait("job stopped", 10, after=t0)
if stopped:
    steps_rep = stopped[1].get("steps_reported")
    say("worker stopped %.0f ms after the deadline, having reported %s step events (%s)" % (
        (stopped[0] - t0 - deadline) * 1000, steps_rep, stopped[1].get("outcome")))
time.sleep(0.5)
after = {w.id: w.pid for w in info().workers}
check(stopped is not None and not d.find("worker did not stop within the cancel grace; killing its process group", after=t0)
      and after == pids_before, "cooperative stop: no kill, same worker processes")

# --- 5. wedged inside one CUDA kernel: killed, memory back, capacity restored ----------------------------
say()
say("== 5. a worker wedged inside one long CUDA kernel past its deadline")
time.sleep(1.0)
t_base = time.time()
time.sleep(0.5)
baseline = mem.median_since(t_base)
say("pre-job GPU memory baseline: %.0f MiB (both workers idle)" % (baseline / MiB))
deadline = 3.0
t0 = time.time()
md = (("hourglass-fault", "hang"),)
w5, h5, steps5, n5 = (256, 256, 30, 1) if DRY else (2048, 2048, 30, 8)
say("job %dx%d x%d, %d steps, fault hang (after the first step), deadline %.1f s" % (w5, h5, n5, steps5, deadline))
try:
    stub.Generate(request(w5, h5, steps5, n5, seed=5), timeout=deadline, metadata=md)
    code = grpc.StatusCode.OK
except grpc.RpcError as e:
    code = e.code()
t_answer = time.time()
check(code == grpc.StatusCode.DEADLINE_EXCEEDED and t_answer - t0 < deadline + 0.2,
      "caller answered %s at %.3f s (deadline %.1f s)" % (code.name, t_answer - t0, deadline))
wedged = d.wait("fault: wedging the GPU inside one long kernel", 1, after=t0)
check(DRY or wedged is not None, "the worker wedged inside a CUDA kernel (torch.cuda._sleep)")
kill = d.wait("worker did not stop within the cancel grace; killing its process group", 15, after=t0)
if kill is None:
    check(False, "the wedged worker was killed after the cancel grace")
else:
    t_kill, krec = kill
    peak = mem.peak_between(t0, t_kill)
    say("peak GPU memory during the job: %.0f MiB (+%.0f MiB over the baseline)" % (peak / MiB, (peak - baseline) / MiB))
    check(True, "worker pid %s killed %.0f ms after the deadline (cancel grace 1 s)" % (krec.get("pid"), (t_kill - t0 - deadline) * 1000))
    tolerance = 16 * MiB
    time.sleep(2.0)
    t_mem = mem.first_at_or_below(baseline + tolerance, t_kill)
    if t_mem is None:
        check(False, "GPU memory back to the baseline after the kill (now %.0f MiB)" % (mem.now() / MiB))
    else:
        check(t_mem - t_kill <= 1.0, "GPU memory back to the pre-job baseline %.0f ms after the kill" % ((t_mem - t_kill) * 1000))
    new_ready = d.wait("worker process ready", 180, after=t_kill)
    if new_ready is None:
        check(False, "a new worker replaced the killed one")
    else:
        say("capacity restored %.2f s after the kill (a new worker, pid %s, ready: torch import, CUDA context, weights)" % (
            new_ready[0] - t_kill, new_ready[1].get("pid")))
        ws = info().workers
        check(len(ws) == 2 and all(w.state == generate_pb2.WORKER_STATE_READY for w in ws)
              and int(krec.get("pid")) not in [w.pid for w in ws], "both slots ready again, the killed pid gone")
    try:
        os.kill(int(krec.get("pid")), 0)
        check(False, "killed worker process gone")
    except ProcessLookupError:
        check(True, "killed worker process gone (reaped)")
    resp = stub.Generate(request(1024, 1024, 10, 2, seed=9), timeout=60)
    check(len(resp.images) == 2, "the pool serves the next job")

# --- 6. SIGTERM ------------------------------------------------------------------------------------
say()
say("== 6. SIGTERM")
pids = [w.pid for w in info().workers]
channel.close()
d.proc.send_signal(signal.SIGTERM)
try:
    rc = d.proc.wait(60)
except subprocess.TimeoutExpired:
    d.proc.kill()
    rc = None
check(rc == 0, "hourglassd exited %s" % rc)
left = []
for p in pids:
    try:
        os.kill(p, 0)
        left.append(p)
    except ProcessLookupError:
        pass
check(not left, "no worker process left (%s)" % (left or pids))
time.sleep(1.0)
final = mem.median_since(time.time() - 0.5)
check(final <= mem_before_daemon + 16 * MiB, "GPU memory back to %.0f MiB (before hourglassd: %.0f MiB)" % (
    final / MiB, mem_before_daemon / MiB))
mem.stop_flag.set()

say()
say("RESULT: %s" % ("all checks passed" if not failures else "%d check(s) failed: %s" % (len(failures), "; ".join(failures))))
if OUTDIR:
    os.makedirs(OUTDIR, exist_ok=True)
    with open(os.path.join(OUTDIR, "gpu-check.txt"), "w") as f:
        f.write("\n".join(report_lines) + "\n")
    with open(os.path.join(OUTDIR, "hourglassd.log"), "w") as f:
        f.write(open(os.path.join(WORK, "hourglassd.log")).read()[-8 << 20:])
    with open(os.path.join(OUTDIR, "gpu-memory.csv"), "w") as f:
        f.write("unix_time,used_bytes\n")
        f.writelines("%.4f,%d\n" % s for s in mem.samples[-200000:])
sys.exit(1 if failures else 0)
PYEOF
exit $status
