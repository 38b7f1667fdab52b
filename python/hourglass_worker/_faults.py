"""TEST-ONLY fault injection, the same faults as the Go worker's.

hourglass promises that a job past its deadline stops using its worker even
when the worker misbehaves; the end-to-end tests prove it by asking a worker
to misbehave through Job.fault. Nothing here is reachable unless the worker
runs with --unsafe-fault-injection (and hourglassd too, which is what lets
a fault into a job at all).

Faults combine with commas, e.g. "slow=50ms,ignore-cancel":

  hang           after the first step, block forever without looking at
                 cancellation (a generator may wedge the GPU instead: see
                 Generator.fault_hang)
  ignore-cancel  keep stepping after cancellation until every step is done
  crash          exit with status 3 after the first step
  oom            fail with OutOfMemory after the first step
  slow=DURATION  each step takes that much longer (cancellable unless
                 ignore-cancel); DURATION as Go writes it: 200ms, 1.5s, 1m
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parses a Go duration ("300ms", "1m30s") into seconds."""
    pos, total = 0, 0.0
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            raise ValueError("bad duration %r" % text)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


@dataclass
class Faults:
    hang: bool = False
    ignore_cancel: bool = False
    crash: bool = False
    oom: bool = False
    slow: float = 0.0  # seconds per step

    @property
    def any(self) -> bool:
        return self.hang or self.ignore_cancel or self.crash or self.oom or self.slow > 0


def parse_faults(spec: str) -> Faults:
    f = Faults()
    for item in spec.split(","):
        item = item.strip()
        name, has_arg, arg = item.partition("=")
        if item == "hang":
            f.hang = True
        elif item == "ignore-cancel":
            f.ignore_cancel = True
        elif item == "crash":
            f.crash = True
        elif item == "oom":
            f.oom = True
        elif name == "slow" and has_arg:
            try:
                d = parse_duration(arg)
            except ValueError:
                d = 0.0
            if d <= 0:
                raise ValueError("fault %r: want slow=DURATION with a positive duration such as slow=200ms" % item)
            f.slow = d
        else:
            raise ValueError("unknown fault %r; known: hang, ignore-cancel, crash, oom, slow=DURATION" % item)
    return f
