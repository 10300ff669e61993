"""Device-shaped throughput (`python -m tests.bench.device`): is the host work hidden behind the device?

The full `generate` path (table, planning, resume, post-processing threads, manifest, safety-checker plumbing; no
report) runs with the model replaced by a stand-in that holds no CPU while it "computes": it sleeps a set time per
image, as a GPU would, and returns sprite-like 1024x1024 RGBA images (tests/bench/sprites.py). The stand-in is a
`Renderer` (pipeline/run/renderer.py) passed to `generate`; it poses as a CUDA device, so `generate` takes its GPU
path (pipeline/run/postprocess.py with threads). The safety checker is the real `SafetyChecker` with the real CLIP
image processor; only its CLIP forward is replaced by a wait of CHECKER_SECONDS per image. One device: the
checker's wait and the model's never overlap (a GPU runs one thread's kernels after the other's).

Reported: wall time / the stand-in's total wait, for 1 and 2 processes (`--shard i/2` jobs side by side, one worker
process each), at batch 1 and 4; and the peak memory over 100 and 1,000 images. Writes its section of
tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .common import REPO, machine, median, table, versions, write_section  # noqa: E402

CHECKER_SECONDS = 0.005  # CLIP ViT-L/14 forward per image on a GPU, waited for by the stand-in checker
MIB = 1024 * 1024
TINY = REPO / "models" / "tiny"
MEMORY_HEADERS = ["images", "s/image", "PNG level", "RSS start", "after 100", "after last", "peak", "wall/device"]


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    processes: int
    batch: int
    seconds_per_image: float
    level: int
    images: int  # in the table; each of `processes` shard jobs takes its share
    safety_checker: bool = True
    threads: int | None = None  # run.writer_threads; None: the device's default


@dataclass
class Timeline:
    """What the stand-in saw: its waits (perf_counter start, end) and memory as images came out."""

    waits: list[tuple[float, float]] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # per wait: how much later than asked the sleep returned
    checker_seconds: float = 0.0
    images: int = 0
    rss_at: dict[int, int] = field(default_factory=dict)  # images produced -> RSS bytes
    device: threading.Lock = field(default_factory=threading.Lock)  # one GPU: its waits never overlap


class StandInClip:
    """The CLIP forward of the safety checker: waits instead of computing; flags nothing."""

    def __init__(self, timeline: Timeline):
        self.timeline = timeline

    def __call__(self, clip_input, images):
        seconds = CHECKER_SECONDS * len(images)
        with self.timeline.device:
            time.sleep(seconds)
        self.timeline.checker_seconds += seconds
        return images, [False] * len(images)


class StandInRenderer:
    """A `Renderer` posing as one CUDA device: it sleeps `seconds_per_image` per row (holding no CPU, as a GPU
    computes) and returns sprite-like images; its safety checker is the real one around `StandInClip`."""

    def __init__(self, setup, seconds_per_image: float, timeline: Timeline, rss_marks=()):
        import psutil
        import torch
        from transformers import CLIPImageProcessor

        from pipeline.model.safety import SafetyChecker

        self.device, self.device_name, self.dtype = torch.device("cuda", 0), "stand-in", torch.float16
        self.weights = {"base": "stand-in"}
        self.safety_checker = None
        if setup.safety_checker:  # the real class and pre-processing; only the CLIP forward waits
            clip = StandInClip(timeline)
            self.safety_checker = SafetyChecker(clip, CLIPImageProcessor(), torch.device("cpu"), torch.float32)
        self.seconds_per_image, self.timeline, self.rss_marks = seconds_per_image, timeline, rss_marks
        self.process = psutil.Process()

    def render(self, batch):
        from pipeline.run.outcome import Rendered

        return [Rendered(rgba) for rgba in self.images(batch.rows)]

    def images(self, rows):
        from .sprites import sprite_batch

        timeline = self.timeline
        with timeline.device:  # after the checker's forward, if one is running
            started, seconds = time.perf_counter(), self.seconds_per_image * len(rows)
            time.sleep(seconds)  # returns once this thread has the GIL and a core again: lateness shows contention
            timeline.waits.append((started, time.perf_counter()))
        timeline.late.append(timeline.waits[-1][1] - started - seconds)
        images = sprite_batch([row.seed for row in rows])  # a fresh array per batch, as a device copy is
        before = timeline.images
        timeline.images += len(rows)
        for mark in self.rss_marks:
            if before < mark <= timeline.images:
                timeline.rss_at[mark] = self.process.memory_info().rss
        return images


def write_table(folder: Path, rows: int) -> Path:
    """Both shard jobs write the same table: each into its own file, renamed into place."""
    path = folder / "prompts.csv"
    own = folder / f".prompts-{os.getpid()}.csv"
    own.write_text("prompt,seed\n" + "".join(f"sprite number {i},{i}\n" for i in range(rows)))
    os.replace(own, path)
    return path


def config_for(case: Case):
    """The tiny model's files: planning resolves and hashes real weight files before the (stand-in) load."""
    from pipeline.input.config import Config, ModelConfig, RunConfig

    model = ModelConfig(base=str(TINY / "sdxl"), layerdiffuse=str(TINY / "layerdiffusion-v1"),
                        safety_checker=str(TINY / "safety-checker"))  # fmt: skip
    run = RunConfig(batch_size=case.batch, png_compress_level=case.level, safety_checker=case.safety_checker,
                    writer_threads=case.threads, log_format="json")  # fmt: skip
    return Config(model=model, run=run)


def run_case(case: Case, folder: Path, shard: tuple[int, int] | None, rss_marks=()) -> dict:
    """One `generate` call under the stand-in, in this process; times are perf_counter and time.time."""
    from pipeline.common.logs import Log
    from pipeline.run.executor import generate

    folder.mkdir(parents=True, exist_ok=True)
    source = write_table(folder, case.images)
    timeline = Timeline()
    renderers = functools.partial(StandInRenderer, seconds_per_image=case.seconds_per_image, timeline=timeline,
                                  rss_marks=rss_marks)  # fmt: skip
    with open(os.devnull, "w") as devnull:
        rss_start = _rss()
        started_wall, started = time.time(), time.perf_counter()
        summary = generate(config_for(case), source, folder / "out", shard=shard, log=Log("json", stream=devnull),
                           renderers=renderers)  # fmt: skip
        ended = time.perf_counter()
    waits = timeline.waits
    gaps = [b[0] - a[1] for a, b in zip(waits, waits[1:], strict=False)]
    return {"start": started_wall, "end": started_wall + ended - started, "wall": ended - started,
            "device": sum(e - s for s, e in waits) + timeline.checker_seconds,
            "loop": waits[-1][1] - waits[0][0] if waits else 0.0, "head": waits[0][0] - started if waits else 0.0,
            "tail": ended - waits[-1][1] if waits else 0.0, "gap": median(gaps) if gaps else 0.0,
            "late": median(timeline.late) if timeline.late else 0.0,
            "screen_per_image": _stage_seconds(folder / "out", "screen") / max(timeline.images, 1), "ok": summary.ok,
            "write_per_image": _write_seconds(folder / "out"), "rss_start": rss_start, "rss_peak": _peak_rss(),
            "rss_at": timeline.rss_at}  # fmt: skip


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _stage_seconds(out: Path, stage: str) -> float:
    """A stage's seconds in this run's statistics (stats/<part>.json; the newest part)."""
    newest = max((out / "stats").glob("*.json"), key=lambda p: p.name)
    return json.loads(newest.read_text())["seconds"].get(stage, 0.0)


def _write_seconds(out: Path) -> float:
    """Median `write_seconds` (encode + write + hash, in the writer) over the records of the parts."""
    values = []
    for part in (out / "parts").glob("*.jsonl"):
        values += [json.loads(line).get("write_seconds") for line in part.read_text().splitlines() if line]
    values = [v for v in values if v is not None]
    return median(values) if values else 0.0


# --- worker processes: started once, then told what to run over stdin, one JSON line per case ---


class Worker:
    def __init__(self):
        command = [sys.executable, "-m", "tests.bench.device", "--worker"]
        self.process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("ready")

    def send(self, case: Case, folder: Path, shard, rss_marks=()) -> None:
        message = {"case": asdict(case), "folder": str(folder), "shard": shard, "rss_marks": list(rss_marks)}
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def result(self) -> dict:
        return json.loads(self._expect("result"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def _expect(self, word: str) -> str:
        for line in self.process.stdout:
            if line.startswith(word + " "):
                return line.split(" ", 1)[1]
        raise RuntimeError(f"benchmark worker ended (exit code {self.process.wait()}) before sending {word!r}")


def worker_main() -> None:
    """Imports and the sprite set are ready before the first case starts its clock."""
    import pipeline.model  # noqa: F401
    import pipeline.run  # noqa: F401

    from .sprites import sprites

    sprites()
    print("ready {}", flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        shard = tuple(message["shard"]) if message["shard"] else None
        result = run_case(Case(**message["case"]), Path(message["folder"]), shard, message["rss_marks"])
        print("result " + json.dumps(result), flush=True)


def measure(case: Case, workers: list[Worker], folder: Path) -> dict:
    """One sample in a fresh folder; shard jobs start together, wall time runs from the first start to the
    last end."""
    used = workers[: case.processes]
    for i, worker in enumerate(used):
        worker.send(case, folder, [i, case.processes] if case.processes > 1 else None)
    results = [worker.result() for worker in used]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    device = max(r["device"] for r in results)
    loop = max(r["loop"] / (r["device"] - _last_checker_wait(case)) for r in results)
    keys = ("gap", "late", "tail", "screen_per_image", "write_per_image")
    return {"wall": wall, "device": device, "ratio": wall / device, "loop_ratio": loop,
            "ok": sum(r["ok"] for r in results), **{k: max(r[k] for r in results) for k in keys}}  # fmt: skip


def _last_checker_wait(case: Case) -> float:
    """The loop runs from the first wait's start to the last wait's end: every wait but the last batch's
    checker forward falls inside it."""
    return CHECKER_SECONDS * case.batch if case.safety_checker else 0.0


def grid(cases: list[Case], work: Path, repeats: int) -> list[dict]:
    """Each case `repeats` times, the repetitions interleaved (load from other processes drifts)."""
    workers = [Worker(), Worker()]
    samples: dict[Case, list[dict]] = {case: [] for case in cases}
    try:  # a short warm-up: the first plan of a process hashes the weight files, later ones find the hashes
        measure(Case(2, 1, 0.01, cases[0].level, 4), workers, work / "warm-up")
        for _ in range(repeats):
            for case in cases:
                samples[case].append(measure(case, workers, work / f"run-{sum(map(len, samples.values()))}"))
                print(_line(case, samples[case][-1]), flush=True)
    finally:
        for worker in workers:
            worker.close()
    return [{"case": case, "samples": found} for case, found in samples.items()]


def memory_case(case: Case, work: Path, marks: tuple[int, ...]) -> dict:
    worker = Worker()  # a fresh process: its peak RSS is this run's
    try:
        worker.send(case, work / f"memory-{case.images}", None, marks)
        result = worker.result()
    finally:
        worker.close()
    return {"case": case, **result}


def cases_for(images: int, level: int, compare_level: int | None, compare_threads=()) -> list[Case]:
    """Both device speeds, batch 1 and 4, 1 and 2 processes at `level`; batch 4 at `compare_level` and with
    each of `compare_threads` writer threads; batch 4 without the safety checker (what its host side costs)."""
    cases = [Case(p, b, s, level, images * p) for s in (0.6, 0.3) for b in (1, 4) for p in (1, 2)]
    batch_4 = [c for c in cases if c.batch == 4]
    if compare_level is not None and compare_level != level:
        cases += [replace(c, level=compare_level) for c in batch_4]
    cases += [replace(c, threads=t) for t in compare_threads for c in batch_4 if c.seconds_per_image == 0.3]
    cases += [replace(c, safety_checker=False) for c in batch_4 if c.processes == 1]
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=32, help="images per process for each configuration")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (min and median)")
    parser.add_argument("--level", type=int, default=None, help="PNG level (default: the configured default)")
    parser.add_argument("--compare-level", type=int, default=None, help="also run batch 4 at this level")
    parser.add_argument("--compare-threads", type=int, nargs="*", default=[1, 3],
                        help="also run batch 4 at 0.3 s/image with these writer threads")  # fmt: skip
    parser.add_argument("--memory-images", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    level = _default_level() if args.level is None else args.level
    from pipeline.model import build_tiny_model

    build_tiny_model(TINY)  # its files are resolved and hashed like real weights
    work = Path(tempfile.mkdtemp(prefix="layerdiffuse-device-"))
    started = time.perf_counter()
    try:
        rows = grid(cases_for(args.images, level, args.compare_level, args.compare_threads), work, args.repeats)
        memory = [memory_case(Case(1, 4, 0.05, level, n, safety_checker=False), work, (100, n))
                  for n in args.memory_images]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        dump = {"rows": rows, "memory": memory}
        args.json.write_text(json.dumps(dump, default=lambda c: asdict(c), indent=1))
    text = render(rows, memory, time.perf_counter() - started, level, args.repeats)
    print(text)
    if not args.no_write:
        write_section("Device-shaped throughput", text)


def _default_level() -> int:
    from pipeline.input.config import RunConfig

    return RunConfig().png_compress_level


def _line(case: Case, sample: dict) -> str:
    return (f"{case.processes} proc, batch {case.batch}, {case.seconds_per_image} s/img, level {case.level}, "
            f"threads {_threads(case)}, checker {case.safety_checker}: "
            f"wall/device {sample['ratio']:.3f} (loop {sample['loop_ratio']:.3f}), "
            f"gap {sample['gap'] * 1000:.0f} ms, late {sample['late'] * 1000:.0f} ms, "
            f"screen {sample['screen_per_image'] * 1000:.0f} ms/img, "
            f"write {sample['write_per_image'] * 1000:.0f} ms/img")  # fmt: skip


def _grid_row(row: dict) -> list:
    c, samples = row["case"], row["samples"]

    def mid(key: str) -> float:
        return median([s[key] for s in samples])

    def spread(key: str) -> str:
        values = [s[key] for s in samples]
        return f"{min(values):.3f}" if len(values) == 1 else f"{min(values):.3f} / {median(values):.3f}"

    return [c.processes, c.batch, c.seconds_per_image, c.level, _threads(c), "on" if c.safety_checker else "off",
            samples[0]["ok"], f"{mid('device'):.1f}", f"**{spread('ratio')}**", spread("loop_ratio"),
            f"{mid('gap') * 1000:.0f}", f"{mid('late') * 1000:.0f}", f"{mid('tail'):.2f}",
            f"{mid('screen_per_image') * 1000:.0f}", f"{mid('write_per_image') * 1000:.0f}"]  # fmt: skip


def _memory_row(m: dict) -> list:
    marks = {int(k): v for k, v in m["rss_at"].items()}
    return [m["ok"], m["case"].seconds_per_image, m["case"].level, f"{m['rss_start'] / MIB:.0f}",
            f"{marks.get(100, 0) / MIB:.0f}", f"{marks.get(m['case'].images, 0) / MIB:.0f}",
            f"{m['rss_peak'] / MIB:.0f}", f"{m['wall'] / m['device']:.2f}"]  # fmt: skip


def _threads(case: Case) -> str:
    from pipeline.run.postprocess import ACCELERATOR_THREADS

    return f"{ACCELERATOR_THREADS} (default)" if case.threads is None else str(case.threads)


GRID_HEADERS = ["processes", "batch", "s/image", "PNG level", "threads", "checker", "images", "device s", "wall/device",
                "loop/device", "gap/batch ms", "late/batch ms", "tail s", "screen ms/img", "write ms/img"]  # fmt: skip


def render(rows: list[dict], memory: list[dict], seconds: float, level: int, repeats: int) -> str:
    reps = "one run each" if repeats == 1 else f"min / median of {repeats} runs, interleaved"
    return f"""## Device-shaped throughput: the full `generate` with a stand-in device

Produced by `python -m tests.bench.device` ({seconds:.0f} s). Machine: {machine()}.
{versions("pillow", "numpy", "psutil")}. The machine is shared with other processes, whose load varies:
repeat before reading differences of a few percent.

`generate` runs for real (table, planning, resume, post-processing threads, manifest parts and merge, the
safety checker's pre-processing) against a stand-in device that sleeps s/image per image, holding no CPU, and
returns sprite-like 1024x1024 images; it poses as CUDA, so the safety check, PNG encoding, writing, hashing
and records run on the GPU path's post-processing threads ("threads": `run.writer_threads`). The checker's
CLIP forward waits {CHECKER_SECONDS * 1000:.0f} ms per image on the same stand-in device (never overlapping
the model's waits). PNG level {level} unless the table says otherwise (the configured default is
{_default_level()}). 2 processes: two `--shard i/2` jobs side by side, one worker process each (started before
the clock), wall time from the first start to the last end; "images" counts both. "device s": the stand-in's
waits in one process, checker included. Ratios, {reps}:
"wall/device", the whole `generate` call(s) / that; "loop/device", first model wait's start to last model
wait's end / the device waits inside (host work that stalls the device between batches, without the start
and the last batch's post-processing). "gap/batch": median time between two model calls (the main thread's
host work, or the checker's forward on the device); "late/batch": how much later than asked the model's
wait returned (the main thread waiting for the GIL or a core); "tail": last model wait's end to return (the
last batch's post-processing, the manifest merge); "screen": the safety checker's host side and forward per
image; "write": encode + write + hash per image (median manifest `write_seconds`); both on the
post-processing threads. Per-process values: the worse process.

{table(GRID_HEADERS, [_grid_row(r) for r in rows])}

Memory (1 process, batch 4, 0.05 s/image and no safety checker to stay short: host-bound, so the writers
fall behind the device and only the bound on batches in flight keeps memory flat; a fresh worker process
per run; RSS in MiB at the start of `generate`, after 100 images, after the last, and the process's peak):

{table(MEMORY_HEADERS, [_memory_row(m) for m in memory])}
"""


if __name__ == "__main__":
    main()
