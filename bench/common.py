"""Shared pieces of the benchmark scripts: the machine load a run saw, a model directory with random
weights (speed does not depend on the weights), timing statistics, and writing one script's section of
docs/PERFORMANCE.md.

Every script measures ratios side by side in one run (interleaved repetitions) because the machines
these run on are shared and noisy; absolute figures are printed too, with the load they were taken
under.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nscfate.commands import count  # noqa: E402  (the CLI's type for counts: one place for it)

PERF_DOC = ROOT / "docs" / "PERFORMANCE.md"
#: Where benchmark scratch data goes by default (outside the repository).
DEFAULT_WORK = Path(os.environ.get("NSCFATE_BENCH_WORK", "/work/data/perf"))

log = logging.getLogger("bench")


def setup_logging(verbose: bool = False) -> None:
    """INFO logs on stderr; TensorFlow's C++ chatter off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "anvil"):  # a line per request would drown the figures
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------- options

def float_at_least(minimum: float, *, exclusive: bool = False):
    """An argparse ``type`` for floats of at least (or, ``exclusive``, above) ``minimum``."""
    def parse(text: str) -> float:
        value = float(text)
        if not (value > minimum if exclusive else value >= minimum):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {'above' if exclusive else 'at least'} {minimum:g}, got {value:g}")
        return value
    parse.__name__ = "float"
    return parse


def positive_list(text: str) -> list[int]:
    """An argparse ``type`` for comma-separated counts of at least one, e.g. ``1,2,3``."""
    try:
        return [POSITIVE(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1, "
                                         f"e.g. 1,2,3; got {text!r}") from None


#: A count of at least one (images, rounds, clients, ...), and one that may be zero.
POSITIVE = count(1)
NON_NEGATIVE = count(0)


# ------------------------------------------------------------------------------------------ load

@dataclass(frozen=True)
class Load:
    """The machine load at one moment: load averages (1, 5, 15 min) and CPU count."""

    load1: float
    load5: float
    load15: float
    cpus: int
    affinity: int

    def __str__(self) -> str:
        return (f"load average {self.load1:.2f} / {self.load5:.2f} / {self.load15:.2f} (1/5/15 min) "
                f"on {self.cpus} CPU(s), this process may use {self.affinity}")


def machine_load() -> Load:
    """The load averages now (``os.getloadavg``) and the CPUs this process may run on."""
    l1, l5, l15 = os.getloadavg()
    return Load(l1, l5, l15, os.cpu_count() or 1, len(os.sched_getaffinity(0)))


def report_load(when: str) -> Load:
    """Log and return the machine load (scripts print it before and after measuring)."""
    load = machine_load()
    log.info("machine %s: %s", when, load)
    return load


def machine_line(before: Load, after: Load) -> str:
    """One Markdown line saying what the measurements ran on and under what load."""
    return (f"Machine: {platform.machine()}, {before.cpus} CPU(s) ({cpu_model()}), Python "
            f"{platform.python_version()}, {_framework()}. Load average (1 min) "
            f"{before.load1:.2f} before, {after.load1:.2f} after (5 min: {before.load5:.2f} -> {after.load5:.2f}).")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name, family/model and widest vector instructions, e.g. "AMD EPYC, family 25 model 1,
    AVX2". Cloud VMs often name only the vendor, and the same name has covered CPUs whose model speed
    differs twofold (ResNet50 on 2 cores: ~160 images/s with AVX-512, ~85 with AVX2 only), so figures
    from different sessions are comparable only where this says the same."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    family = f", family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return f"{fields['model name']}{family}, {vector}"


def _framework() -> str:
    """What the models ran on: TensorFlow, or Keras on another backend (as on the GPU machines)."""
    backend = sys.modules["keras"].config.backend() if "keras" in sys.modules else \
        os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        import importlib

        import keras

        version = getattr(importlib.import_module(backend), "__version__", "")
        return f"Keras {keras.__version__} on {backend} {version}".rstrip()
    try:
        import tensorflow as tf

        return f"TensorFlow {tf.__version__}"
    except ImportError:
        return "TensorFlow not installed"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, in seconds (its own threads, from
    /proc; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_jiffies(cores: set[int] | None = None, stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """(idle, total) clock ticks of ``cores`` (every core when None) since boot, from /proc/stat; idle
    counts waiting on I/O too. Two readings give the share of a span the cores sat idle."""
    idle = total = 0
    for line in stat.read_text().splitlines():
        name, *ticks = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cores is not None and int(name[3:]) not in cores):
            continue
        values = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
        idle += values[3] + values[4]
        total += sum(values)
    return idle, total


# ---------------------------------------------------------------------------- the scratch filesystem

def filesystem_of(path: Path, mounts: Path = Path("/proc/mounts")) -> str:
    """The filesystem ``path`` lives on, e.g. "ext4 (/dev/vda at /)", from the longest mount point
    above it."""
    path = path.resolve()
    best = ("", "unknown", "?")
    try:
        for line in mounts.read_text().splitlines():
            device, point, kind = line.split()[:3]
            point = point.replace("\\040", " ")
            if path.is_relative_to(point) and len(point) > len(best[0]):
                best = (point, kind, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} at {best[0] or '?'})"


def file_create_ms(folder: Path, files: int = 200, size: int = 30_000) -> float:
    """CPU milliseconds this process spends creating and writing one new ``size``-byte file in ``folder``,
    unsynced: what the host pays for the file of each stored image, less its sync.

    Printed because it differs tenfold between filesystems on the same VM: ext4 without a journal (this
    VM's root filesystem) steps over every inode deleted in the last few minutes before it hands out a new
    one (the kernel's ``recently_deleted``), so after one benchmark run's cleanup the next run's files cost
    ~1 ms each instead of ~0.08 ms on a journaled ext4. The files stay (the caller's scratch folder goes
    at the end): deleting them here would charge the run's own files the same way."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    t0 = time.process_time()
    for i in range(files):
        fd = os.open(folder / f"probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return 1000 * (time.process_time() - t0) / files


def scratch_line(folder: Path) -> str:
    """One sentence on the filesystem under ``folder`` and what a new file costs there (probed in a
    subfolder of ``folder``)."""
    ms = file_create_ms(folder / "fs-probe")
    return (f"Scratch filesystem: {filesystem_of(folder)}; a new 30 kB file costs {ms:.2f} ms of CPU to create and "
            f"write there (the host makes one per stored image).")


# ------------------------------------------------------------------------------------ CPU quotas

class CpuQuota:
    """A cgroup whose processes may use at most ``cores`` CPUs between them (a CFS quota): a worker with
    a fixed CPU budget of its own, standing in for a machine of its own on a machine with few cores.
    Needs root and the cgroup ``cpu`` controller (v2, or v1's ``/sys/fs/cgroup/cpu``).

    A short period (10 ms) keeps a capped process from running long and then stalling long.
    """

    def __init__(self, name: str, cores: float, period_us: int = 10_000) -> None:
        if cores <= 0:
            raise ValueError("a CPU quota must be positive")
        root, v2 = _cpu_cgroup_root()
        self.path = root / name
        quota = max(1000, round(cores * period_us))  # the kernel's smallest quota is 1 ms
        try:
            self.path.mkdir()
            try:
                if v2:
                    (self.path / "cpu.max").write_text(f"{quota} {period_us}")
                else:
                    (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                    (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            except OSError:
                self.path.rmdir()
                raise
        except OSError as exc:
            raise SystemExit(f"could not set a CPU quota in {self.path}: {exc} (needs root and the cgroup cpu "
                             "controller)") from exc

    def add(self, pid: int) -> "CpuQuota":
        """Move process ``pid`` (all its threads) into the cgroup; returns the quota."""
        (self.path / "cgroup.procs").write_text(str(pid))
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Remove the cgroup (once its processes have exited)."""
        deadline = time.monotonic() + timeout
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("could not remove %s; remove it once its processes are gone", self.path)
                    return
                time.sleep(0.1)


def _cpu_cgroup_root() -> tuple[Path, bool]:
    """The directory new CPU cgroups go in, and whether it is cgroup v2."""
    unified = Path("/sys/fs/cgroup")
    controllers = unified / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        control = unified / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            try:
                control.write_text("+cpu")
            except OSError as exc:  # e.g. a container's cgroup that holds processes itself
                raise SystemExit(f"could not enable the cpu controller for new cgroups in {unified}: {exc}") from exc
        return unified, True
    v1 = unified / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1, False
    raise SystemExit("CPU quotas need the cgroup cpu controller (v2 or v1 at /sys/fs/cgroup/cpu) and root; "
                     "this machine offers neither")


# ------------------------------------------------------------------------------------------ stats

@dataclass(frozen=True)
class Stats:
    """Summary of a list of durations in milliseconds."""

    n: int
    median: float
    p90: float
    mean: float
    minimum: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> "Stats":
        v = np.asarray(values_ms, dtype=np.float64)
        return cls(len(v), float(np.median(v)), float(np.percentile(v, 90)), float(v.mean()), float(v.min()))

    def __str__(self) -> str:
        return f"median {self.median:.2f} ms, p90 {self.p90:.2f} ms, min {self.minimum:.2f} ms (n={self.n})"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------------------ models

def make_random_model_dir(path: Path, arch: str = "resnet50", input_size: tuple[int, int] = (75, 75),
                          task: str = "medium4", seed: int = 0) -> Path:
    """A complete model directory (``nscfate.modeldir``) of ``arch`` with random weights, for speed
    measurements before a trained model exists (speed does not depend on the weights). Reused when it
    is already there."""
    from nscfate.modeldir import read_model_dir

    path = Path(path)
    if (path / "checksums.sha256").is_file():
        read_model_dir(path, check=True)
        return path
    import keras

    from nscfate.architectures import build_model
    from nscfate.classes import get_task
    from nscfate.modeldir import save_model_dir

    keras.utils.set_random_seed(seed)
    classes = get_task(task).classes
    model = build_model(arch, len(classes), input_size)
    rng = np.random.default_rng(seed)
    golden = rng.uniform(0.3, 0.6, size=(4, *input_size, 1)).astype(np.float32)
    save_model_dir(
        path, model, name=f"{arch}-random", version="0.0.0", task=task, arch=arch, golden_input=golden,
        config={"arch": arch, "input_size": list(input_size), "note": "random weights for benchmarks"},
        metrics={}, training_data={"description": "none: RANDOM WEIGHTS, a benchmark stand-in, not a model",
                                   "synthetic": True},
        reproduce_command=f"bench.common.make_random_model_dir({str(path)!r}, {arch!r}, {tuple(input_size)})",
        weights_dtype="float32")
    return path


def add_model_arguments(ap) -> None:
    """``--model`` and ``--work``, as the serving benchmarks take them (see :func:`chosen_model`)."""
    ap.add_argument("--model", type=Path, help="model directory (default: the shipped ResNet50, else random weights)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch folder (default {DEFAULT_WORK})")


def chosen_model(args) -> tuple[Path, str]:
    """The model of :func:`add_model_arguments`' options, and a phrase saying which it is (for the doc).
    Creates the scratch folder ``--work``, where the benchmarks make their temporary hosts."""
    args.work.mkdir(parents=True, exist_ok=True)
    return (args.model, f"`{args.model}`") if args.model else shipped_or_random_model(args.work)


def shipped_or_random_model(work: Path, name: str = "resnet50-medium4") -> tuple[Path, str]:
    """The shipped model directory ``models/<name>`` when it exists, else a random-weight ResNet50 at
    75x75 under ``work``. Returns the path and a phrase saying which it is (for the doc)."""
    shipped = ROOT / "models" / name
    if (shipped / "checksums.sha256").is_file():
        return shipped, f"the shipped model `models/{name}`"
    path = make_random_model_dir(work / "models" / "resnet50-random-75x75")
    return path, "a ResNet50 at 75x75 with random weights (`bench.common.make_random_model_dir`; the shipped " \
                 "model had not landed; speed does not depend on the weights)"


def sample_images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` distinct IFC-like crops from ``nscfate.synth`` as (file name, 8-bit grey OME-TIFF bytes),
    the same files ``nscfate synth`` writes (round-robin over the four media)."""
    import io

    import tifffile

    from nscfate.synth import SynthConfig, generate

    config = SynthConfig(per_class=max(1, -(-n // 4)), seed=seed)
    per_medium = [list(generate(config, m)) for m in config.media]
    out = []
    for i in range(n):
        img = per_medium[i % len(per_medium)][i // len(per_medium)]
        buf = io.BytesIO()
        tifffile.imwrite(buf, img.pixels, ome=True, photometric="minisblack", metadata={"axes": "YX"})
        out.append((img.filename(1, "tif"), buf.getvalue()))
    return out


# ------------------------------------------------------------------------------------------ doc

def command_line() -> str:
    """The command that is running, as one could type it again from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join(["python", shlex.quote(script_text), *map(shlex.quote, sys.argv[1:])])


def write_section(name: str, title: str, body: str, before: Load, after: Load, *, level: int = 3,
                  doc: Path = PERF_DOC) -> None:
    """Write one script's section of ``doc``: the heading, when and by which command it was measured,
    ``body`` (Markdown), and the machine and its load. Replaces the text between ``<!-- bench:NAME -->``
    and ``<!-- /bench:NAME -->`` (or appends the section when the markers are missing)."""
    markdown = (f"{'#' * level} {title}\n\nMeasured {stamp()}:\n\n`{command_line()}`\n\n{body.strip()}\n\n"
                f"{machine_line(before, after)}")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Performance\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")
    log.info("wrote the %s section of %s", name, doc)


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
