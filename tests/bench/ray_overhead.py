"""Ray executor overhead (`python -m tests.bench.ray_overhead [--rows 10000 ...]`; `make bench-ray`).

1. Scheduling overhead: the same shards run directly, one after another in this process (`run_task` with the
   workers' duties, then the merge), against `--executor ray` on a one-CPU local Ray cluster (one worker, so
   both sides do the same work in turn). The model is a stand-in `Renderer` that sleeps SECONDS_PER_ROW per
   row and returns one fixed RGBA image: no model loads, so the difference is Ray's (start of the workers,
   shipping each task and its result, the driver's loop). Reported per task and per row.
2. Actors against plain tasks on the tiny model (two workers): both keep the model loaded per worker process.
Writes its section of tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from .common import REPO, machine, table, versions, write_section  # noqa: E402

SECONDS_PER_ROW = 0.002
TINY = REPO / "models" / "tiny"


class SleepRenderer:
    """A device that takes SECONDS_PER_ROW per row and always makes the same transparent image."""

    def __init__(self, setup):
        import numpy as np
        import torch

        self.device, self.dtype, self.weights, self.safety_checker = torch.device("cpu"), torch.float32, {}, None
        self.device_name = "stand-in"
        size = setup.config.defaults
        self.rgba = np.zeros((size.height, size.width, 4), np.uint8)

    def render(self, batch):
        from pipeline.run.outcome import Rendered

        time.sleep(SECONDS_PER_ROW * len(batch.rows))
        return [Rendered(self.rgba) for _ in batch.rows]


def tiny_config(batch_size: int = 4):
    from pipeline.input.config import Config, Defaults, ModelConfig, RunConfig

    model = ModelConfig(base=str(TINY / "sdxl"), layerdiffuse=str(TINY / "layerdiffusion-v1"), device="cpu",
                        safety_checker=str(TINY / "safety-checker"), dtype="float32",
                        build_tiny_if_missing=True)  # fmt: skip
    defaults = Defaults(width=64, height=64, num_inference_steps=2, enable_safety_checker=False)
    return Config(model=model, defaults=defaults, run=RunConfig(batch_size=batch_size, tta=False))


def write_table(folder: Path, rows: int) -> Path:
    path = folder / f"t{rows}.csv"
    path.write_text("id,prompt\n" + "".join(f"r{i},thing {i}\n" for i in range(rows)))
    return path


def direct(request, tasks: int) -> float:
    """The shards in turn in this process, then the merge: what the executor schedules, without Ray."""
    from pipeline.common.storage import Storage
    from pipeline.folder.manifest import merge
    from pipeline.run.loop import Task, read_table, run_task
    from pipeline.run.ray_tasks import WORKER_DUTIES

    started = time.perf_counter()
    for i in range(tasks):
        run_task(request, Task(i, tasks), WORKER_DUTIES)
    table_ = read_table(request.config, request.input_path)
    assert merge(Storage(request.out), table_.keys, table_.passthrough) is not None
    return time.perf_counter() - started


def on_ray(request, tasks: int, actors: bool = True) -> float:
    from pipeline.common.logs import Log
    from pipeline.run.ray_executor import RayExecutor, RaySettings

    started = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        summary = RayExecutor(RaySettings(tasks=tasks, actors=actors)).run(request, Log(stream=quiet))
    assert summary.manifest_written
    return time.perf_counter() - started


def overhead_rows(folder: Path, cases: list[tuple[int, int]]) -> list[list]:
    import ray

    from pipeline.run.loop import RunRequest

    config, out = tiny_config(), []
    ray.init(address="local", num_cpus=1, logging_level="WARNING")
    try:
        for rows, tasks in cases:
            path = write_table(folder, rows)
            request = RunRequest(config, path, folder / f"direct-{rows}-{tasks}", renderers=SleepRenderer)
            plain = direct(request, tasks)
            through = on_ray(replace(request, out=folder / f"ray-{rows}-{tasks}"), tasks)
            extra = through - plain
            print(f"{rows} rows, {tasks} tasks: direct {plain:.1f} s, ray {through:.1f} s", flush=True)
            out.append([f"{rows:,}", f"{tasks:,}", f"{plain:.1f}", f"{through:.1f}", f"{extra / tasks * 1000:.0f}",
                        f"{extra / rows * 1000:.2f}", f"{extra / plain:+.1%}"])  # fmt: skip
    finally:
        ray.shutdown()
    return out


def pool_rows(folder: Path, rows: int, tasks: int) -> list[list]:
    import ray

    from pipeline.run.loop import RunRequest

    path, out = write_table(folder, rows), []
    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    try:
        for actors in (True, False):
            request = RunRequest(tiny_config(2), path, folder / f"pool-{actors}")
            seconds = on_ray(request, tasks, actors)
            print(f"tiny model, {'actors' if actors else 'tasks'}: {seconds:.1f} s", flush=True)
            out.append(["actors (default)" if actors else "plain tasks", rows, tasks, f"{seconds:.1f}"])
    finally:
        ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="10000x100,10000x1000", help="ROWSxTASKS,... (e.g. 100000x1000)")
    args = parser.parse_args()
    cases = [tuple(int(n) for n in case.split("x")) for case in args.cases.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        overhead = overhead_rows(folder, cases)
        pools = pool_rows(folder, 48, 12)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_section("Ray executor", report(overhead, pools))


def report(overhead: list[list], pools: list[list]) -> str:
    return f"""## Ray executor

`make bench-ray` ({machine()} · {versions("ray")}). One run each (the machine is shared: a few percent is noise).

Scheduling overhead: the same shards run directly in one process, in turn, against `--executor ray` on a
one-CPU local cluster (one actor); a stand-in device that sleeps {SECONDS_PER_ROW * 1000:g} ms per row and returns
one fixed 64x64 image, batch 4. Both sides read the table, plan, write PNGs, part logs and statistics per
shard, and merge once; "extra" is what Ray adds (worker start, shipping tasks and results, the driver's loop).

{table(["rows", "tasks", "direct (s)", "ray (s)", "extra per task (ms)", "extra per row (ms)", "extra"], overhead)}

Actors against plain tasks, tiny model (64x64, 2 steps, no TTA, batch 2), two workers on a two-CPU local
cluster, wall time of the whole run including the workers' start and model loads:

{table(["workers", "rows", "tasks", "wall (s)"], pools)}
"""


if __name__ == "__main__":
    main()
