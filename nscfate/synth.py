"""The synthetic IFC-like benchmark: brightfield single-cell crops in the real export layout.

Real imaging-flow-cytometry data cannot be shipped, so ``nscfate synth`` writes a stand-in that the
*same* loader reads::

    DIR/<medium>/<medium>_D<day><replicate>_<object>_Ch1.ome.tif      e.g. astro/astro_D3B_000042_Ch1.ome.tif
    DIR/synth.json                                                    the settings that made it

What a cell looks like
----------------------
Every cell is a round-ish blob 13-25 px across, as dissociated cells in suspension are: a dark rim
(the refractive membrane edge), a faint bright halo just outside it, and a granular interior. The
medium shifts a handful of *overlapping* cues away from the undifferentiated stem-cell look (the
``ctrl`` medium); no single cue separates the classes:

=========  =====================================================================================
medium     cues at full strength and why
=========  =====================================================================================
ctrl       undifferentiated: ~17 px, round or slightly oval, no processes, medium-grain texture
astro      astrocyte medium (serum/BMP): larger and flatter (~21 px, wider spread, more oval, weaker
           halo, coarse smooth texture: spreading cytoplasm), 1-3 *thick* short processes
oligo      oligodendrocyte medium: small (~15.5 px), 4-8 *fine radial* processes, fine texture
rashh      RA + SHH: smallest (~15 px), elongated (polarised), 1-3 *long thin* processes,
           mostly at the two ends of the long axis (young bipolar neurons)
nt3        NT-3: round, a little larger (~18 px), *blebbing* outline (membrane bumps), rarely a
           short thin process, fine granular texture
bdnf, fsk, variants in the same vocabulary (provisional media keys, see ``nscfate.classes``)
t3, nano
=========  =====================================================================================

Each cue is a distribution, not a value (sizes overlap by design; process counts are random), and
all cues grow with the days in culture: ``strength(day) = 1 - exp(-day / 1.5)`` (day 1: 0.49,
day 3: 0.86, day 7: 0.99) interpolates every medium from the ``ctrl`` look towards its own, so early
days are harder, as in Zhu et al. (2021). Difficulty at the default day 3 (docs/DATA.md): a
size+intensity baseline ~63 %, a small CNN trained for ~4 min on CPU ~93 %.

Nuisances
---------
Drawn per acquisition batch (day + replicate, shared by all media, so independent of the class):
background grey (85-135) and pixel noise (SD 0.5-2 grey levels), contrast gain, defocus blur,
horizontal banding, doublet rate (a second cell touching the first), debris rate (small specks),
crop height (37-57 px at 60 px width) and position jitter. ``confound="background"`` replaces the
background draw by the shortcut seen in public copies of the real data: oligodendrocyte-medium crops
at grey ~152 with noise SD ~1.6, all others at ~101 with SD ~0.5 - a model (or the background-only
baseline of ``nscfate.baselines``) can then classify oligo from the background alone.

Marker channels (``with_markers``): Ch2 GFAP (astrocyte), Ch3 Olig2 (oligodendrocyte), Ch4 NeuN
(neuronal), fluorescence in the cell's footprint whose brightness follows the medium's lineage. They
encode the label; they exist so the loader's refusal to use them as input can be tested.

Determinism and speed
---------------------
Every image is a function of ``(seed, medium, index)`` (its own random generator; the batch
nuisances of ``(seed, day, replicate)``), so the output does not depend on chunking or on the number
of processes. Rendering is vectorised over chunks of images in float32 NumPy (blurs via OpenCV).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from nscfate.classes import MEDIA, TASKS
from nscfate.errors import ConfigError

log = logging.getLogger(__name__)

#: Crop geometry of the IFC exports (Amnis ImageStream at 40x): width 60 px, height 37-57 px.
CROP_WIDTH = 60
CROP_HEIGHT_RANGE = (37, 57)
DEFAULT_MEDIA: tuple[str, ...] = TASKS["medium4"].classes
DEFAULT_DAYS: tuple[int, ...] = (3,)
DEFAULT_REPLICATES = 5
CONFOUNDS = ("background",)
FORMATS = ("tif", "bmp")
#: Days over which class cues reach 1 - 1/e of their full strength.
CUE_TIME_CONSTANT_DAYS = 1.5
#: Channel numbers of the export: 1 brightfield, 2-4 fluorescence markers.
MARKER_CHANNELS = {2: "GFAP (AF488)", 3: "Olig2 (PE)", 4: "NeuN (APC)"}
_MARKER_LINEAGE = {2: "astrocyte", 3: "oligodendrocyte", 4: "neuron"}

# ------------------------------------------------------------------------------------------------
# what each medium looks like


@dataclass(frozen=True)
class Look:
    """Mean appearance of a cell at full cue strength. Units: pixels, or contrast relative to the
    background grey (signal -0.45 = 45 % darker than background)."""

    diameter: float = 17.0  # mean body diameter, px
    diameter_sd: float = 2.0
    eccentricity: float = 0.05  # mean (a - b) / (a + b) of the body ellipse
    protrusions: float = 0.15  # mean number of processes
    min_protrusions: float = 0.0  # processes every cell has (scaled by the cue strength, rounded)
    protrusion_width: float = 1.0  # px (Gaussian half-width)
    protrusion_length: float = 3.0  # px beyond the rim
    bipolar: float = 0.0  # probability that processes sit at the two ends of the long axis
    granule_scale: float = 1.0  # px, spatial scale of the interior texture
    texture: float = 0.05  # contrast SD of the interior texture
    blebs: float = 0.6  # mean number of membrane bumps
    rim: float = 0.45  # depth of the dark rim
    halo: float = 0.14  # height of the bright halo outside the rim


NEUTRAL = Look()  # the undifferentiated stem cell: every medium starts here on day 0

LOOKS: dict[str, Look] = {
    "ctrl": NEUTRAL,
    "astro": Look(diameter=21.0, diameter_sd=2.6, eccentricity=0.14, protrusions=2.0, min_protrusions=1,
                  protrusion_width=2.0, protrusion_length=4.5, granule_scale=1.8, texture=0.035, blebs=0.6,
                  rim=0.40, halo=0.09),
    "oligo": Look(diameter=15.5, diameter_sd=1.9, eccentricity=0.05, protrusions=6.5, min_protrusions=4,
                  protrusion_width=0.7, protrusion_length=6.0, granule_scale=0.7, texture=0.05, blebs=0.4,
                  rim=0.45, halo=0.14),
    "rashh": Look(diameter=14.8, diameter_sd=1.9, eccentricity=0.24, protrusions=2.0, min_protrusions=1,
                  protrusion_width=0.85, protrusion_length=11.0, bipolar=0.9, granule_scale=1.0, texture=0.05,
                  blebs=0.6, rim=0.47, halo=0.16),
    "nt3": Look(diameter=18.0, diameter_sd=1.9, eccentricity=0.05, protrusions=0.6, protrusion_width=0.8,
                protrusion_length=5.0, granule_scale=0.65, texture=0.08, blebs=6.0, rim=0.47, halo=0.16),
    "bdnf": Look(diameter=16.0, diameter_sd=1.9, eccentricity=0.1, protrusions=1.4, protrusion_width=0.8,
                 protrusion_length=8.0, bipolar=0.3, granule_scale=0.9, texture=0.06, blebs=3.0, rim=0.46,
                 halo=0.15),
    "fsk": Look(diameter=15.0, diameter_sd=1.8, eccentricity=0.25, protrusions=2.0, min_protrusions=1,
                protrusion_width=0.75, protrusion_length=12.0, bipolar=1.0, granule_scale=1.0, texture=0.05,
                blebs=0.6, rim=0.47, halo=0.16),
    "t3": Look(diameter=16.0, diameter_sd=1.9, eccentricity=0.05, protrusions=4.5, min_protrusions=2,
               protrusion_width=0.7, protrusion_length=5.0, granule_scale=0.8, texture=0.05, blebs=0.5, rim=0.45,
               halo=0.14),
    "nano": Look(diameter=16.5, diameter_sd=2.0, eccentricity=0.1, protrusions=1.5, protrusion_width=0.8,
                 protrusion_length=7.0, bipolar=0.4, granule_scale=0.8, texture=0.065, blebs=4.0, rim=0.46,
                 halo=0.15),
}
assert set(LOOKS) == set(MEDIA), "every medium needs a look"


def cue_strength(day: float) -> float:
    """How far (0..1) a medium has moved its cells from the undifferentiated look after ``day`` days."""
    return float(1.0 - np.exp(-max(day, 0.0) / CUE_TIME_CONSTANT_DAYS))


def look_on_day(medium: str, day: float) -> Look:
    """The medium's look interpolated from :data:`NEUTRAL` by :func:`cue_strength`."""
    s, target = cue_strength(day), LOOKS[medium]
    return Look(**{f.name: getattr(NEUTRAL, f.name) + s * (getattr(target, f.name) - getattr(NEUTRAL, f.name))
                   for f in fields(Look)})


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic dataset (written to ``synth.json`` beside it).

    Attributes:
        per_class: images per medium, spread evenly over the acquisition batches.
        seed: the one seed everything derives from.
        media: medium keys (folder and class names).
        days: days in culture; each day has ``replicates`` acquisition batches (A, B, C, ...).
        replicates: acquisition batches per day.
        confound: None, or "background" to tie the background grey to the medium (the real shortcut).
        format: "tif" (OME-TIFF, 8-bit grey) or "bmp" (24-bit grey, as in public ``.ome.bmp`` copies).
        with_markers: also write fluorescence marker channels Ch2-Ch4 (they encode the label).
    """

    per_class: int
    seed: int = 0
    media: tuple[str, ...] = DEFAULT_MEDIA
    days: tuple[int, ...] = DEFAULT_DAYS
    replicates: int = DEFAULT_REPLICATES
    confound: str | None = None
    format: str = "tif"
    with_markers: bool = False

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise ConfigError(f"per_class must be at least 1, got {self.per_class}")
        unknown = [m for m in self.media if m not in MEDIA]
        if unknown or not self.media or len(set(self.media)) != len(self.media):
            raise ConfigError(f"media must be distinct keys of {', '.join(MEDIA)}; "
                              f"got {', '.join(self.media) or 'none'}")
        if not self.days or any(not 0 <= d <= 99 for d in self.days) or len(set(self.days)) != len(self.days):
            raise ConfigError(f"days must be distinct integers 0..99; got {self.days}")
        if not 1 <= self.replicates <= 26:
            raise ConfigError(f"replicates must be 1..26 (letters A-Z); got {self.replicates}")
        if self.confound not in (None, *CONFOUNDS):
            raise ConfigError(f"unknown confound {self.confound!r}; known: {', '.join(CONFOUNDS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {self.format!r}")

    @property
    def batches(self) -> list[tuple[int, str]]:
        """Acquisition batches as (day, replicate letter), in a fixed order."""
        return [(d, chr(ord("A") + r)) for d in self.days for r in range(self.replicates)]

    def to_dict(self) -> dict:
        return {**asdict(self), "media": list(self.media), "days": list(self.days)}


@dataclass(frozen=True)
class Batch:
    """Nuisances of one acquisition batch (shared by all media)."""

    day: int
    replicate: str
    background: float  # grey level, 8-bit scale
    noise: float  # pixel noise SD, grey levels
    gain: float  # contrast multiplier
    defocus: float  # Gaussian blur sigma, px
    banding: float  # amplitude relative to background
    band_period: float  # px
    doublet_rate: float
    debris_rate: float  # mean specks per image
    height_mean: float  # mean crop height
    jitter: float  # SD of the cell position, px

    @property
    def group(self) -> str:
        return f"D{self.day}{self.replicate}"


def _stable_code(text: str) -> int:
    """A process-independent integer for a string (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode())


def draw_batch(seed: int, day: int, replicate: str, medium: str | None = None, confound: str | None = None) -> Batch:
    """The nuisances of batch (day, replicate). Without a confound the medium is ignored; with
    ``confound="background"`` the background level and noise depend on the medium."""
    rng = np.random.default_rng([seed, _stable_code("batch"), day, ord(replicate)])
    u = rng.random(12)
    background, noise = 85.0 + 50.0 * u[0], 0.5 + 1.5 * u[1]
    if confound == "background":
        # public samples: oligodendrocyte medium ~152 (SD ~1.6), astrocyte/neuron media ~101 (SD ~0.5)
        oligo = medium is not None and MEDIA[medium].lineage == "oligodendrocyte"
        background = (152.0 if oligo else 101.0) + 2.0 * (u[10] - 0.5)
        noise = (1.6 if oligo else 0.5) * (0.9 + 0.2 * u[11])
    return Batch(day=day, replicate=replicate, background=background, noise=noise, gain=0.85 + 0.3 * u[2],
                 defocus=0.3 + 0.5 * u[3], banding=0.012 * u[4], band_period=6.0 + 14.0 * u[5],
                 doublet_rate=0.06 * u[6], debris_rate=0.1 + 0.6 * u[7], height_mean=41.0 + 12.0 * u[8],
                 jitter=0.8 + 1.7 * u[9])


# ------------------------------------------------------------------------------------------------
# rendering

_H, _W = CROP_HEIGHT_RANGE[1], CROP_WIDTH  # the canvas; crops take rows from its middle
_YY, _XX = np.mgrid[:_H, :_W].astype(np.float32)
_MAX_PROTRUSIONS = 8
_MAX_BLEBS = 8
_MAX_DEBRIS = 4
# per-image random numbers: a fixed number per image, so each image consumes its generator identically
_NU, _NZ = 64, 32


@dataclass
class SynthImage:
    """One generated crop (8-bit grey) and where it belongs."""

    pixels: np.ndarray
    medium: str
    index: int
    day: int
    replicate: str
    markers: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"D{self.day}{self.replicate}"

    def filename(self, channel: int = 1, fmt: str = "tif") -> str:
        return f"{self.medium}_{self.group}_{self.index:06d}_Ch{channel}.ome.{fmt}"


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (rng.random(_NU, dtype=np.float32), rng.standard_normal(_NZ, dtype=np.float32),
            rng.standard_normal((2, _H, _W), dtype=np.float32))


def _cell_params(look: Look, u: np.ndarray, z: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell shape parameters for a chunk. ``u``/``z``: (K, n) uniforms/normals columns reserved
    for this cell."""
    diameter = np.clip(look.diameter + look.diameter_sd * z[:, 0], 11.0, 28.0)
    ecc = np.clip(np.abs(look.eccentricity + 0.04 * z[:, 1]), 0.0, 0.35)
    angle = np.pi * u[:, 0]
    # protrusion count: binomial(8, mean/8), close to Poisson for the means used
    n_prot = (u[:, 1:1 + _MAX_PROTRUSIONS] < min(look.protrusions / _MAX_PROTRUSIONS, 1.0)).sum(axis=1)
    n_prot = np.maximum(n_prot, int(round(look.min_protrusions)))
    n_bleb = (u[:, 9:9 + _MAX_BLEBS] < min(look.blebs / _MAX_BLEBS, 1.0)).sum(axis=1)
    bipolar = u[:, 17] < look.bipolar
    return {
        "cy": cy, "cx": cx, "radius": diameter / 2, "ecc": ecc, "angle": angle,
        "n_prot": n_prot, "n_bleb": n_bleb, "bipolar": bipolar,
        "prot_width": look.protrusion_width * (1 + 0.12 * z[:, 2]).clip(0.6, 1.5),
        "prot_length": look.protrusion_length * (1 + 0.25 * z[:, 3]).clip(0.4, 1.8),
        "prot_u": u[:, 18:18 + _MAX_PROTRUSIONS], "prot_z": z[:, 4:4 + _MAX_PROTRUSIONS],
        "bleb_u": u[:, 26:26 + _MAX_BLEBS],
        "granule": look.granule_scale * (0.85 + 0.3 * u[:, 34]),
        "texture": look.texture * (0.8 + 0.4 * u[:, 35]),
        "rim": look.rim + 0.04 * z[:, 12],
        "halo": look.halo + 0.025 * z[:, 13],
        "interior": -0.03 + 0.03 * z[:, 14],
    }


_N_ANGLES = 256  # angular resolution of the outline table
_ANGLES = np.linspace(0.0, 2 * np.pi, _N_ANGLES, endpoint=False, dtype=np.float32)
_SUB = 16  # OpenCV sub-pixel drawing: coordinates in 1/16 px


def _outline(p: dict[str, np.ndarray]) -> np.ndarray:
    """Radius of each cell's outline over :data:`_ANGLES` (K, N): an ellipse plus membrane blebs."""
    phi = _ANGLES[None, :] - p["angle"][:, None]
    a = (p["radius"] * (1 + p["ecc"]))[:, None]
    b = (p["radius"] * (1 - p["ecc"]))[:, None]
    r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    for j in range(_MAX_BLEBS):  # blebs: narrow bumps of the outline (von Mises profile)
        on = p["n_bleb"] > j
        if not on.any():
            break
        theta = 2 * np.pi * p["bleb_u"][:, j:j + 1]
        height = 1.2 + 0.8 * p["bleb_u"][:, (j + 3) % _MAX_BLEBS:(j + 3) % _MAX_BLEBS + 1]
        r += on[:, None] * height * np.exp(18.0 * (np.cos(_ANGLES[None, :] - theta) - 1.0))
    return r.astype(np.float32)


def _render_cells(p: dict[str, np.ndarray], texture_noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast signal (K, H, W) of cells on a zero background, and their footprint (0..1)."""
    import cv2

    k = len(p["cy"])
    col = lambda a: np.asarray(a, np.float32).reshape(k, 1, 1)  # noqa: E731
    dx, dy = _XX - col(p["cx"]), _YY - col(p["cy"])
    rho = np.sqrt(dx * dx + dy * dy)
    bins = (np.arctan2(dy, dx) * (_N_ANGLES / (2 * np.pi))).astype(np.int32) % _N_ANGLES
    outline = _outline(p)
    d = rho - np.take_along_axis(outline, bins.reshape(k, -1), axis=1).reshape(rho.shape)  # radial distance to outline
    inside = 0.5 - 0.5 * np.tanh(d / 1.4)
    signal = col(p["interior"]) * inside
    signal -= col(p["rim"]) * np.exp(-(d / 1.1) ** 2)
    signal += col(p["halo"]) * np.exp(-((d - 2.2) / 1.3) ** 2)
    signal += col(p["texture"]) * _granules(texture_noise, p["granule"]) * np.minimum(inside, d < -1.5)

    # processes: dark tapering lines from the rim outwards, drawn anti-aliased by OpenCV
    ink = np.zeros((k, _H, _W), np.uint8)
    canvas = np.zeros((_H, _W), np.uint8)
    for i in np.nonzero(p["n_prot"] > 0)[0]:
        canvas[:] = 0
        width, length = float(p["prot_width"][i]), float(p["prot_length"][i])
        thickness = 2 if width >= 1.4 else 1
        strength = min(width / (0.7 * thickness), 1.0)  # fainter when thinner than the drawn line
        for j in range(int(p["n_prot"][i])):
            theta = float(_protrusion_angle(p, i, j))
            r0 = float(outline[i, int(theta % (2 * np.pi) * _N_ANGLES / (2 * np.pi)) % _N_ANGLES]) - 1.0
            bend = 0.03 * float(p["prot_z"][i, j])
            pts = []
            for t in np.linspace(0.0, length, 4):
                off = bend * t * t
                pts.append((p["cx"][i] + (r0 + t) * np.cos(theta) - off * np.sin(theta),
                            p["cy"][i] + (r0 + t) * np.sin(theta) + off * np.cos(theta)))
            pts_i = (np.array(pts) * _SUB).round().astype(np.int32)
            cv2.polylines(canvas, [pts_i[:3]], False, int(255 * strength), thickness, cv2.LINE_AA, 4)
            cv2.line(canvas, tuple(pts_i[2]), tuple(pts_i[3]), int(180 * strength), max(thickness - 1, 1),
                     cv2.LINE_AA, 4)
        ink[i] = canvas
    line = ink.astype(np.float32) * np.float32(1 / 255)
    signal -= 0.5 * line * (1.0 - inside)
    return signal, np.maximum(inside, line)


def _protrusion_angle(p: dict[str, np.ndarray], i: int, j: int) -> float:
    """Angle of process j of cell i: bipolar cells put them at the two ends of the long axis; others
    spread them around the cell (evenly spaced with jitter, so several fine processes look radial)."""
    n = max(int(p["n_prot"][i]), 1)
    if p["bipolar"][i]:
        return float(p["angle"][i] + np.pi * (j % 2) + 0.25 * p["prot_z"][i, j])
    return float(p["angle"][i] + 2 * np.pi * (p["prot_u"][i, 0] + j / n) + (p["prot_u"][i, j] - 0.5) * np.pi / n)


def _granules(noise: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """White noise blurred at each cell's granule scale and rescaled to unit SD."""
    import cv2

    out = np.empty_like(noise)
    for i in range(len(noise)):
        g = cv2.GaussianBlur(noise[i], (0, 0), float(scale[i]))
        out[i] = g / (g.std() + 1e-6)
    return out


def _render_chunk(config: SynthConfig, medium: str, indices: Sequence[int]) -> list[SynthImage]:
    """Render images ``indices`` of ``medium``; each depends only on (config, medium, index)."""
    import cv2

    batches = config.batches
    med_code = _stable_code(medium)
    k = len(indices)
    u = np.empty((k, _NU), np.float32)
    z = np.empty((k, _NZ), np.float32)
    fields_ = np.empty((k, 2, _H, _W), np.float32)
    for row, index in enumerate(indices):
        u[row], z[row], fields_[row] = _draw(np.random.default_rng([config.seed, med_code, index]))
    batch_of = [batches[i % len(batches)] for i in indices]
    nuis = [draw_batch(config.seed, day, rep, medium, config.confound) for day, rep in batch_of]
    nb = lambda name: np.array([getattr(b, name) for b in nuis], np.float32)  # noqa: E731

    # one look per day present in the chunk
    days = np.array([b.day for b in nuis])
    signal = np.empty((k, _H, _W), np.float32)
    footprint = np.empty((k, _H, _W), np.float32)
    jitter = nb("jitter")
    cy = (_H - 1) / 2 + jitter * z[:, 20]
    cx = (_W - 1) / 2 + jitter * z[:, 21]
    for day in np.unique(days):
        rows = np.nonzero(days == day)[0]
        look = look_on_day(medium, float(day))
        params = _cell_params(look, u[rows], z[rows], cy[rows], cx[rows])
        signal[rows], footprint[rows] = _render_cells(params, fields_[rows, 0])
        # doublets: a second cell of the same sample touching the first
        local = np.nonzero(u[rows, 40] < nb("doublet_rate")[rows])[0]
        if local.size:
            dbl = rows[local]
            theta = 2 * np.pi * u[dbl, 41]
            dist = (params["radius"][local] + look.diameter / 2) * (0.85 + 0.2 * u[dbl, 42])
            partner = _cell_params(look, np.roll(u[dbl], 23, axis=1), np.roll(z[dbl], 11, axis=1),
                                   cy[dbl] + dist * np.sin(theta), cx[dbl] + dist * np.cos(theta))
            s2, f2 = _render_cells(partner, fields_[dbl, 1])
            signal[dbl] += s2
            footprint[dbl] = np.maximum(footprint[dbl], f2)

    # debris: small dark or bright specks anywhere in the crop
    n_debris = (u[:, 44:44 + _MAX_DEBRIS] < (nb("debris_rate") / _MAX_DEBRIS)[:, None]).sum(axis=1)
    for j in range(_MAX_DEBRIS):
        on = np.nonzero(n_debris > j)[0]
        if on.size == 0:
            break
        py, px = _H * u[on, 48 + j], _W * u[on, 52 + j]
        r = (0.7 + 0.9 * u[on, 56 + j]).reshape(-1, 1, 1)
        sign = np.where(u[on, 60 + j] < 0.7, -0.3, 0.15).reshape(-1, 1, 1)
        signal[on] += sign * np.exp(-((_YY - py.reshape(-1, 1, 1)) ** 2 + (_XX - px.reshape(-1, 1, 1)) ** 2) / (r * r))

    # defocus: the batch's blur plus a per-cell focus jitter (cells flow at different depths)
    sigma = np.clip(nb("defocus") + 0.1 * z[:, 22], 0.2, None)
    for i in range(k):
        signal[i] = cv2.GaussianBlur(signal[i], (0, 0), float(sigma[i]))

    bg = nb("background").reshape(k, 1, 1)
    band = nb("banding").reshape(k, 1, 1) * np.sin(2 * np.pi * _YY / nb("band_period").reshape(k, 1, 1)
                                                  + 2 * np.pi * u[:, 43].reshape(k, 1, 1))
    grey = bg * (1.0 + nb("gain").reshape(k, 1, 1) * signal + band) + nb("noise").reshape(k, 1, 1) * fields_[:, 1]
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)

    lo, hi = CROP_HEIGHT_RANGE
    heights = np.clip(np.rint(nb("height_mean") + 4.0 * z[:, 23]), lo, hi).astype(int)
    out = []
    for i, index in enumerate(indices):
        top = (_H - heights[i]) // 2
        img = SynthImage(pixels=np.ascontiguousarray(grey[i, top:top + heights[i]]), medium=medium, index=int(index),
                         day=nuis[i].day, replicate=nuis[i].replicate)
        if config.with_markers:
            crop = slice(top, top + heights[i])
            img.markers = _markers(medium, nuis[i].day, footprint[i, crop], fields_[i, 1, crop], u[i, 36:39])
        out.append(img)
    return out


def _markers(medium: str, day: int, footprint: np.ndarray, noise: np.ndarray, u: np.ndarray) -> dict[int, np.ndarray]:
    """Fluorescence channels 2-4: dark background, the cell footprint lit by the medium's marker."""
    s = cue_strength(day)
    lineage = MEDIA[medium].lineage
    out = {}
    for n, (channel, marker_lineage) in enumerate(_MARKER_LINEAGE.items()):
        level = (0.25 + 0.7 * s) * (0.8 + 0.4 * u[n]) if lineage == marker_lineage else 0.04 * u[n]
        img = 12.0 + 200.0 * level * footprint + 1.5 * np.roll(noise, 7 * channel, axis=1)
        out[channel] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------------
# public entry points


def _batch_index_ranges(n: int, chunk: int) -> Iterator[range]:
    for start in range(0, n, chunk):
        yield range(start, min(start + chunk, n))


def generate(config: SynthConfig, medium: str, indices: Sequence[int] | None = None,
             chunk: int = 128) -> list[SynthImage]:
    """Render images of one medium in memory (default: all ``config.per_class`` of them)."""
    if medium not in config.media:
        raise ConfigError(f"medium {medium!r} is not in this configuration ({', '.join(config.media)})")
    indices = list(range(config.per_class)) if indices is None else list(indices)
    out: list[SynthImage] = []
    for start in range(0, len(indices), chunk):
        out.extend(_render_chunk(config, medium, indices[start:start + chunk]))
    return out


def generate_arrays(config: SynthConfig) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """All brightfield images of ``config`` in memory: (images, labels as medium keys, groups)."""
    images, labels, groups = [], [], []
    for medium in config.media:
        for img in generate(config, medium):
            images.append(img.pixels)
            labels.append(medium)
            groups.append(img.group)
    return images, np.array(labels), np.array(groups)


def _write_one(path: Path, pixels: np.ndarray, fmt: str, seed: int) -> None:
    if fmt == "tif":
        import tifffile

        # OME-XML carries a UUID; derive it from seed and name so the same config gives identical bytes
        uid = uuid.uuid5(uuid.NAMESPACE_URL, f"nscfate-synth/{seed}/{path.name}")
        buf = io.BytesIO()  # one write() per file: faster than tifffile's seeks on a real file
        tifffile.imwrite(buf, pixels, ome=True, photometric="minisblack", metadata={"axes": "YX", "UUID": str(uid)})
        path.write_bytes(buf.getvalue())
    else:
        from PIL import Image

        Image.fromarray(pixels).convert("RGB").save(path, "BMP")  # 24-bit grey, like IDEAS .ome.bmp copies


def _write_chunk(args: tuple[SynthConfig, str, str, int, int]) -> int:
    config, out_dir, medium, start, stop = args
    folder = Path(out_dir) / medium
    for img in _render_chunk(config, medium, range(start, stop)):
        _write_one(folder / img.filename(1, config.format), img.pixels, config.format, config.seed)
        for channel, marker in img.markers.items():
            _write_one(folder / img.filename(channel, config.format), marker, config.format, config.seed)
    return stop - start


def write_dataset(config: SynthConfig, out_dir: str | Path, *, jobs: int = 1, chunk: int = 128) -> dict:
    """Write the dataset of ``config`` under ``out_dir`` in the IFC export layout; returns a summary
    (also saved as ``out_dir/synth.json``). The files do not depend on ``jobs`` or ``chunk``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for medium in config.media:
        (out / medium).mkdir(exist_ok=True)
    tasks = [(config, str(out), m, r.start, r.stop) for m in config.media
             for r in _batch_index_ranges(config.per_class, chunk)]
    t0 = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            n = sum(pool.map(_write_chunk, tasks))
    else:
        n = sum(_write_chunk(t) for t in tasks)
    seconds = time.perf_counter() - t0
    summary = {
        "generator": "nscfate.synth",
        "config": config.to_dict(),
        "images": n,
        "files": n * (1 + (len(MARKER_CHANNELS) if config.with_markers else 0)),
        "groups": sorted({f"D{d}{r}" for d, r in config.batches}),
        "cue_strength": {str(d): round(cue_strength(d), 3) for d in config.days},
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %d images (%d files) to %s in %.1f s (%.0f images/s, %d job(s))",
             n, summary["files"], out, seconds, n / max(seconds, 1e-9), jobs)
    return {**summary, "seconds": seconds}

