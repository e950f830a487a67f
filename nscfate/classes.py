"""The differentiation media (the labels) and the two prediction tasks.

Labels are the *culture medium* a cell was grown in, not a per-cell marker readout, so everything
user-facing says "predicted differentiation condition".

The medium keys are used everywhere unchanged: as folder names of the imaging-flow-cytometry export
and of the synthetic benchmark, as the class names of models, and in predictions and history.
"""

from __future__ import annotations

from dataclasses import dataclass

from nscfate.errors import ConfigError


@dataclass(frozen=True)
class Medium:
    key: str
    display_name: str
    lineage: str  # the lineage the medium is meant to drive: astrocyte, oligodendrocyte, neuron, none
    description: str


# The four media the seed paper keeps come first. Zhu et al. (2021) imaged 9 media; the public
# material we had names only these four unambiguously, so the other five keys are provisional and can
# be renamed by a lab whose export folders use other names (a dataset may use any subset).
MEDIA: dict[str, Medium] = {
    m.key: m
    for m in (
        Medium("astro", "Astrocyte medium", "astrocyte", "astrocyte differentiation medium (serum/BMP)"),
        Medium("oligo", "Oligodendrocyte medium", "oligodendrocyte", "oligodendrocyte medium (T3/PDGF)"),
        Medium("rashh", "RA + SHH (neuronal)", "neuron", "retinoic acid + sonic hedgehog"),
        Medium("nt3", "NT-3 (neuronal)", "neuron", "neurotrophin-3"),
        Medium("ctrl", "Proliferation control", "none", "undifferentiated control (growth factors kept)"),
        Medium("bdnf", "BDNF (neuronal)", "neuron", "brain-derived neurotrophic factor (provisional key)"),
        Medium("fsk", "Forskolin (neuronal)", "neuron", "forskolin, small molecule (provisional key)"),
        Medium("t3", "Thyroid hormone T3", "oligodendrocyte", "hormone inducer (provisional key)"),
        Medium("nano", "Nanoparticle inducer", "neuron", "nanoparticle inducer (provisional key)"),
    )
}


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]  # ordered medium keys; index = model output index
    description: str

    @property
    def display_names(self) -> dict[str, str]:
        return {key: MEDIA[key].display_name for key in self.classes}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("medium4", ("astro", "oligo", "rashh", "nt3"),
             "4-class differentiation condition: astrocyte, oligodendrocyte, RA/SHH, NT-3 medium"),
        Task("astro_vs_oligo", ("astro", "oligo"),
             "binary: astrocyte medium vs oligodendrocyte medium"),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def get_medium(key: str) -> Medium:
    try:
        return MEDIA[key]
    except KeyError:
        raise ConfigError(f"unknown medium {key!r}; known media: {', '.join(MEDIA)}") from None
