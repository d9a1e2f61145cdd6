"""Step time of the ``knn`` memory against its capacity, with glibc's default allocator settings and with freed
large blocks kept for reuse.

    python benchmarks/knn_capacity.py [--capacities 4096,65536,262144] [--steps 25] [--threads 2]

The step is pure (DESIGN.md), so every write returns new key and value buffers: at 262,144 entries of
``core-small`` that is 2 x 256 MiB per step. glibc serves blocks over 32 MiB with ``mmap`` and returns them to
the kernel when freed, so every step page-faults half a gigabyte of fresh, zeroed pages. With
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment, glibc takes them from the heap
and keeps them after ``free``, and the next step reuses them. Each configuration runs in its own process
(glibc reads these variables at start-up), one after the other per capacity. Prints one JSON object: per
capacity and setting, the median step in ms (after 5 warm-up steps), the process's system and user CPU seconds
over the timed steps, and its peak RSS; ``speedup``: default / kept, per capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)}

CHILD = """
import json, resource, statistics, sys, time
import torch
from memstream.models import build

capacity, steps, threads = (int(v) for v in sys.argv[1:4])
torch.set_num_threads(threads)
torch.manual_seed(0)
core = build("core-small", memory="knn", knn_capacity=capacity).eval()
cfg = core.cfg
x = torch.randn(1, cfg.segment, cfg.dim)
reset, mask = torch.zeros(1, dtype=torch.bool), torch.ones(1, cfg.segment, dtype=torch.bool)
state, times = core.init_state(1), []
with torch.inference_mode():
    for _ in range(5):
        _, state = core.step(x, state, reset, mask)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t0 = time.perf_counter()
        _, state = core.step(x, state, reset, mask)
        times.append(time.perf_counter() - t0)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"step_ms": round(1e3 * statistics.median(times), 2),
                  "system_s": round(after.ru_stime - before.ru_stime, 2),
                  "user_s": round(after.ru_utime - before.ru_utime, 2),
                  "peak_rss_mb": after.ru_maxrss // 1024}))
"""


def measure(capacity: int, steps: int, threads: int, env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD, str(capacity), str(steps), str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capacities", default="4096,65536,262144")
    p.add_argument("--steps", type=int, default=25, help="timed steps per run")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    capacities = [int(c) for c in args.capacities.split(",")]
    result: dict = {"preset": "core-small", "memory": "knn", "steps": args.steps, "threads": args.threads,
                    "keep_freed_env": KEEP_FREED, "capacity": {}, "speedup": {}}
    for capacity in capacities:
        default = measure(capacity, args.steps, args.threads, {})
        kept = measure(capacity, args.steps, args.threads, KEEP_FREED)
        result["capacity"][str(capacity)] = {"default": default, "keep_freed": kept}
        result["speedup"][str(capacity)] = round(default["step_ms"] / kept["step_ms"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
