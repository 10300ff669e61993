"""PNG encoders and settings on sprite-like 1024x1024 RGBA images (`python -m tests.bench.png`).

Time per image (median of REPS per image, then the mean over the set), bytes, and whether Pillow reads the
output back as the same RGBA pixels. Also the other host costs of one written image: sha256, the fsynced
atomic write, the manifest append, and the safety checker's pre-processing; and how encoding scales over
threads and processes (zlib releases the GIL). Optional encoders are measured when installed
(`pip install fpng imagecodecs opencv-python-headless pyspng-seunglab`); none is a dependency of the project.
Writes its section of tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import machine, median, table, timed, versions, write_section
from .sprites import sprites

REPS = 3
SLOW_REPS = 1  # level 9 and optimize take seconds per image: one timed run, no warm-up


@dataclass(frozen=True)
class Encoder:
    name: str
    encode: Callable[[np.ndarray], bytes]
    metadata: bool  # writes the prompt's text chunks itself
    slow: bool = False


@dataclass(frozen=True)
class Measured:
    encoder: Encoder
    ms: list[float]  # per image: median of the repetitions
    min_ms: list[float]
    sizes: list[int]
    lossless: bool

    @property
    def mean_ms(self) -> float:
        return sum(self.ms) / len(self.ms)

    @property
    def mean_kib(self) -> float:
        return sum(self.sizes) / len(self.sizes) / 1024


def sample_row():
    from pipeline.input.rows import Row

    return Row(number=1, key="row-000001", prompt="a glass bottle, game asset, transparent background",
               negative_prompt="text, watermark", seed=1, guidance_scale=8.0, num_inference_steps=20,
               width=1024, height=1024, enable_safety_checker=True)  # fmt: skip


def png_settings(level: int):
    from pipeline.input.schedulers import SCHEDULERS
    from pipeline.run.png import PngSettings

    return PngSettings("sdxl + LayerDiffuse attn", SCHEDULERS["euler"], level)


def pillow(level: int | None = None, **options) -> Callable[[np.ndarray], bytes]:
    """Pillow with the text chunks the pipeline writes (`pipeline.writer.encode_png` for a plain level)."""
    from PIL import Image, PngImagePlugin

    from pipeline.run.png import a1111_parameters, encode_png

    row = sample_row()
    if level is not None and not options:
        settings = png_settings(level)
        return lambda rgba: encode_png(rgba, row, settings)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(row, png_settings(6), row.width, row.height))

    def encode(rgba: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        extra = {} if level is None else {"compress_level": level}
        Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", pnginfo=info, **extra, **options)
        return buffer.getvalue()

    return encode


def encoders() -> list[Encoder]:
    out = [Encoder(f"Pillow level {level}", pillow(level), True, slow=level == 9) for level in (0, 1, 2, 3, 6, 9)]
    out += [Encoder("Pillow level 1, Z_RLE", pillow(1, compress_type=3), True),
            Encoder("Pillow level 6, Z_RLE", pillow(6, compress_type=3), True),
            Encoder("Pillow optimize=True", pillow(optimize=True), True, slow=True)]  # fmt: skip
    for optional in (_opencv, _imagecodecs, _fpng, _pyspng):
        out += optional()
    return out


def _opencv() -> list[Encoder]:
    try:
        import cv2
    except ImportError:
        return []

    def encode(level: int, strategy: int) -> Callable[[np.ndarray], bytes]:
        params = [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_STRATEGY, strategy]
        return lambda rgba: cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), params)[1].tobytes()

    return [Encoder("OpenCV level 1, RLE (its default)", encode(1, cv2.IMWRITE_PNG_STRATEGY_RLE), False),
            Encoder("OpenCV level 3", encode(3, cv2.IMWRITE_PNG_STRATEGY_DEFAULT), False),
            Encoder("OpenCV level 6", encode(6, cv2.IMWRITE_PNG_STRATEGY_DEFAULT), False)]  # fmt: skip


def _imagecodecs() -> list[Encoder]:
    try:
        import imagecodecs
    except ImportError:
        return []
    fast = {"level": 1, "strategy": 3, "filter": 16}  # its documented fast preset (RLE, SUB filter)
    return [Encoder("imagecodecs libpng level 1", lambda x: imagecodecs.png_encode(x, level=1), False),
            Encoder("imagecodecs libpng fast preset", lambda x: imagecodecs.png_encode(x, **fast), False),
            Encoder("imagecodecs libpng level 6", lambda x: imagecodecs.png_encode(x, level=6), False),
            Encoder("imagecodecs libspng level 1", lambda x: imagecodecs.spng_encode(x, level=1), False),
            Encoder("imagecodecs libspng level 6", lambda x: imagecodecs.spng_encode(x, level=6), False)]  # fmt: skip


def _fpng() -> list[Encoder]:
    try:
        import fpng
    except ImportError:
        return []
    return [Encoder("fpng", fpng.from_ndarray, False)]


def _pyspng() -> list[Encoder]:
    try:
        import pyspng
    except ImportError:
        return []
    if not hasattr(pyspng, "encode"):  # the original package decodes only
        return []
    return [Encoder(f"pyspng level {level}", lambda x, lv=level: pyspng.encode(x, compress_level=lv), False)
            for level in (1, 6)]  # fmt: skip


def reads_back_identically(data: bytes, rgba: np.ndarray) -> bool:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.format == "PNG" and image.mode == "RGBA" and np.array_equal(np.asarray(image), rgba)


def measure(encoders: list[Encoder], images, reps: int) -> list[Measured]:
    """Repetitions go round the encoders (each rep times every encoder once) so that load from other
    processes, which drifts, falls on all of them alike; slow encoders are timed once."""
    times: dict[tuple[int, int], list[float]] = {}
    data: dict[tuple[int, int], bytes] = {}
    for rep in range(reps):
        for e, encoder in enumerate(encoders):
            if encoder.slow and rep > 0:
                continue
            for i, rgba in enumerate(images):
                if rep == 0 and not encoder.slow:
                    encoder.encode(rgba)  # warm-up
                seconds, data[e, i] = timed(encoder.encode, rgba)
                times.setdefault((e, i), []).append(seconds * 1000)
    out = []
    for e, encoder in enumerate(encoders):
        per_image = [times[e, i] for i in range(len(images))]
        lossless = all(reads_back_identically(data[e, i], rgba) for i, rgba in enumerate(images))
        out.append(Measured(encoder, [median(t) for t in per_image], [min(t) for t in per_image],
                            [len(data[e, i]) for i in range(len(images))], lossless))  # fmt: skip
    return out


def scaling(encode: Callable[[np.ndarray], bytes], images, workers: int, kind: str) -> float:
    """Images per second encoding the set twice over `workers` threads or processes."""
    work = list(images) * 2
    pool = ThreadPoolExecutor(workers) if kind == "threads" else ProcessPoolExecutor(workers)
    with pool:
        list(pool.map(encode, work[:workers]))  # start the workers
        seconds, _ = timed(lambda: list(pool.map(encode, work)))
    return len(work) / seconds


def gil_probe(images, seconds: float = 2.0) -> list[list]:
    """Does a step hold the GIL? A thread sleeping 1 ms at a time measures how late it wakes while another
    thread repeats the step: holding the GIL shows as delays of the 5 ms switch interval and more, whatever
    the machine's load (which only adds scheduling noise to both)."""
    encoded = [pillow(1)(rgba) for rgba in images]
    steps = {
        "nothing (idle)": lambda: time.sleep(0.01),
        "pure-Python loop (holds the GIL)": lambda: sum(range(200_000)),
        "Pillow PNG level 1": lambda: [pillow(1)(rgba) for rgba in images[:2]],
        "Pillow PNG level 6": lambda: [pillow(6)(rgba) for rgba in images[:2]],
        "sha256 of PNG bytes": lambda: [hashlib.sha256(d).digest() for d in encoded],
        "safety composite (numpy float32)": lambda: _composite(images[:2]),
    }
    rows = []
    for name, step in steps.items():
        delays = sorted(_wake_up_delays(step, seconds))
        rows.append([name, f"{median(delays):.2f}", f"{delays[int(len(delays) * 0.99)]:.2f}"])
    return rows


def _wake_up_delays(step: Callable[[], object], seconds: float) -> list[float]:
    """Milliseconds late of each 1 ms sleep in one thread while another repeats `step`."""
    import threading

    stop, delays = threading.Event(), []

    def repeat():
        while not stop.is_set():
            step()

    def tick():
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            delays.append((time.perf_counter() - started - 0.001) * 1000)

    threads = [threading.Thread(target=repeat), threading.Thread(target=tick)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return delays


def _encode_level(level: int, rgba: np.ndarray) -> bytes:  # picklable, for the process pool
    return pillow(level)(rgba)


def host_costs(images, level: int, reps: int) -> list[list]:
    """Milliseconds per image of what surrounds the encoding, on this level's encoded bytes."""
    from functools import partial

    from transformers import CLIPImageProcessor

    encoded = [pillow(level)(rgba) for rgba in images]
    processor = CLIPImageProcessor()  # CompVis's checker config: 224 px; PIL-based without torchvision
    folder = Path(tempfile.mkdtemp(prefix="layerdiffuse-png-"))
    try:
        steps = {
            "sha256 of the PNG bytes": lambda: [hashlib.sha256(d).hexdigest() for d in encoded],
            "atomic write (temp file, fsync, rename)": partial(_atomic_writes, folder, encoded),
            "plain write, no fsync": partial(_plain_writes, folder, encoded),
            "manifest append (one JSON line, fsync)": partial(_appends, folder, len(encoded)),
            "safety checker: composite over grey (float32)": partial(_composite, images),
            "safety checker: CLIP image processor": partial(_clip_processor, processor, images),
        }
        rows = [[name, *_ms(step, reps)] for name, step in steps.items()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    count = len(images)
    return [[name, f"{best / count:.1f}", f"{mid / count:.1f}"] for name, best, mid in rows]


def _ms(function, reps: int) -> tuple[float, float]:
    times = [timed(function)[0] * 1000 for _ in range(reps)]
    return min(times), median(times)


def _atomic_writes(folder: Path, encoded: list[bytes]) -> None:
    from pipeline.common.storage import write_atomic

    for i, data in enumerate(encoded):
        write_atomic(folder / f"a{i}.png", data)


def _plain_writes(folder: Path, encoded: list[bytes]) -> None:
    for i, data in enumerate(encoded):
        (folder / f"p{i}.png").write_bytes(data)


def _appends(folder: Path, count: int) -> None:
    """`count` records of written rows through the pipeline's part log (one line and one fsync each)."""
    from pipeline.common.storage import Storage
    from pipeline.folder.parts import PartWriter
    from pipeline.plan.batches import Batch
    from pipeline.run.outcome import Provenance, Rendered, Written, manifest_record

    row = sample_row()
    image = {"url": f"images/00000/{row.key}.png", "content_type": "image/png", "file_name": f"{row.key}.png",
             "file_size": 600_000, "width": 1024, "height": 1024}  # fmt: skip
    record = manifest_record(row, Rendered(np.zeros((1, 1, 4), np.uint8), checked=True), request_hash="0" * 64,
                             batch=Batch(0, (row,)), provenance=Provenance({"base": "x" * 60}, {"torch": "2"}, 0),
                             written=Written(image, "0" * 64, 0.1, 0.09), generation_seconds=0.6)  # fmt: skip
    with PartWriter(Storage(folder), f"bench-{count}") as part:
        for _ in range(count):
            part.append(record)


def _composite(images) -> None:
    from pipeline.model.safety import composite_on_grey

    composite_on_grey(np.stack(images))


def _clip_processor(processor, images) -> None:
    """The rest of the host side of `SafetyChecker.flags`: resize, crop, normalise to a tensor."""
    processor(images=[rgba[..., :3] for rgba in images], return_tensors="pt")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    images = sprites()
    results = measure(encoders(), images, args.reps)
    for m in results:
        print(f"{m.encoder.name:40s} {m.mean_ms:8.1f} ms {m.mean_kib:8.0f} KiB lossless={m.lossless}", flush=True)
    by_name = {m.encoder.name: m for m in results}
    threads = [[kind, level, workers, f"{scaling(partial_level(level), images, workers, kind):.2f}"]
               for level in (1, 6) for kind in ("threads", "processes") for workers in (1, 2)]  # fmt: skip
    costs = host_costs(images, level=1, reps=args.reps)
    gil = gil_probe(images)
    text = render(results, by_name, threads, costs, gil, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        write_section("PNG encoders", text)


def partial_level(level: int) -> Callable[[np.ndarray], bytes]:
    from functools import partial

    return partial(_encode_level, level)


def render(results: list[Measured], by_name: dict, threads, costs: list[list], gil: list[list], seconds: float) -> str:
    import PIL.features

    base = by_name["Pillow level 6"]
    rows = [[m.encoder.name, f"{m.mean_ms:.1f}", f"{sum(m.min_ms) / len(m.min_ms):.1f}", f"{m.mean_kib:.0f}",
             f"{m.mean_kib / base.mean_kib:.2f}", f"{base.mean_ms / m.mean_ms:.1f}",
             "yes" if m.encoder.metadata else "no", "yes" if m.lossless else "**NO**"] for m in results]  # fmt: skip
    per_image = [[f"{i}", *(f"{by_name[n].ms[i]:.0f} ms / {by_name[n].sizes[i] // 1024} KiB" for n in PER_IMAGE)]
                 for i in range(len(base.ms))]  # fmt: skip
    zlib = f"zlib {PIL.features.version('zlib')} API, zlib-ng {PIL.features.version('zlib_ng') or 'no'}"
    return f"""## PNG encoders on sprite-like 1024x1024 RGBA images

Produced by `python -m tests.bench.png` ({seconds:.0f} s). Machine: {machine()}.
Pillow {PIL.__version__} ({zlib}); {versions("opencv-python-headless", "imagecodecs", "fpng", "pyspng-seunglab")}.
The machine is shared: other processes ran alongside; repetitions go round the encoders, so a load that drifts
falls on all of them alike, but times still vary by 10-30% between runs.

Images: `tests/bench/sprites.py`, {len(base.ms)} deterministic sprites (anti-aliased alpha edges, soft
shadows, flat, shaded and textured regions, 1-2 levels of grain; transparent background with RGB 0 or with
arbitrary colour as the transparent decoder leaves it). ms: per image, median of the repetitions, mean over
the set (and the same for the fastest repetition); KiB: mean size; "vs 6": size relative to Pillow level 6;
"speed-up": time of Pillow level 6 / this. Lossless: Pillow reads back the same RGBA pixels.
"metadata": writes the prompt's text chunks (the others would need them spliced in after IHDR).

{table(["encoder", "ms", "fastest ms", "KiB", "size vs 6", "speed-up", "metadata", "lossless"], rows)}

Per image (Pillow, with metadata):

{table(["image", *PER_IMAGE], per_image)}

Does a step hold the GIL? Wake-up delay (ms) of a thread sleeping 1 ms at a time while another thread
repeats the step: a step that holds the GIL delays it by the 5 ms switch interval and more.

{table(["step in the other thread", "median delay ms", "p99 delay ms"], gil)}

Encoding throughput over a pool (images/s, the set encoded twice). Two workers can only beat one where the
second core is free of other processes' work:

{table(["pool", "level", "workers", "images/s"], threads)}

Host costs around the encoding, per image (Pillow level 1 bytes; ms, fastest and median run):

{table(["step", "fastest ms", "median ms"], costs)}
"""


PER_IMAGE = ("Pillow level 1", "Pillow level 3", "Pillow level 6")


if __name__ == "__main__":
    main()
