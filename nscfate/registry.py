"""The registry of shipped models: ``models/registry.json``.

::

    {"default": "resnet50-medium4",
     "models": [{"name": "resnet50-medium4", "version": "1.0.0", "path": "resnet50-medium4",
                 "sha256": "<sha256 of the directory's checksums.sha256>"}, ...]}

Each entry pins the exact content of its model directory (the sha256 of its checksum list, which in
turn lists the sha256 of every file), as deepcell pins its released models. ``path`` is relative to the
registry file. The registry root defaults to the repository's ``models/`` and can be pointed elsewhere
with the ``NSCFATE_MODELS_DIR`` environment variable (a lab's own set of models) or the ``root``
argument.

Lookups accept ``name``, ``name@version`` or a model directory path; an unknown name raises
:class:`nscfate.errors.UnknownModelError` listing the known ones.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nscfate.errors import ModelError, UnknownModelError
from nscfate.modeldir import CHECKSUMS_FILE, METADATA_FILE, ModelInfo, read_model_dir, sha256_file

REGISTRY_FILE = "registry.json"
ENV_VAR = "NSCFATE_MODELS_DIR"


def default_root() -> Path:
    """``$NSCFATE_MODELS_DIR`` if set, else the ``models/`` folder next to the ``nscfate`` package."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class RegistryEntry:
    """One shipped model."""

    name: str
    version: str
    path: Path  # absolute
    sha256: str  # of the directory's checksums.sha256
    default: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Registry:
    """The models listed in ``<root>/registry.json``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.file = self.root / REGISTRY_FILE
        self.default_name: str | None = None
        self.entries: tuple[RegistryEntry, ...] = ()
        if self.file.is_file():
            self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.file.read_text(encoding="utf-8"))
            self.default_name = raw.get("default")
            self.entries = tuple(
                RegistryEntry(name=e["name"], version=e["version"], path=(self.root / e["path"]).resolve(),
                              sha256=e["sha256"], default=e["name"] == self.default_name)
                for e in raw.get("models", [])
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{self.file} is not a valid model registry: {exc!r}") from None

    def names(self) -> list[str]:
        """``name@version`` of every entry."""
        return [e.ref for e in self.entries]

    def get(self, ref: str | None = None) -> RegistryEntry:
        """The entry for ``name`` (newest version), ``name@version``, or ``None`` (the default model)."""
        if ref is None:
            if self.default_name is None:
                raise UnknownModelError(f"no default model: {self.file} does not name one")
            ref = self.default_name
        name, _, version = ref.partition("@")
        matches = [e for e in self.entries if e.name == name and (not version or e.version == version)]
        if not matches:
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {ref!r}; known models: {known}")
        return max(matches, key=lambda e: _version_key(e.version))

    def info(self, ref: str | None = None, *, check: bool = True) -> ModelInfo:
        """The :class:`ModelInfo` of an entry, after checking the pinned hash and the directory's checksums."""
        entry = self.get(ref)
        if check:
            check_entry(entry)
        info = read_model_dir(entry.path, check=check)
        if (info.name, info.version) != (entry.name, entry.version):
            raise ModelError(f"{entry.path} holds {info.name}@{info.version}, registry says {entry.ref}")
        return info

    def list(self) -> list[dict]:
        """Cards of all registered models (default first), for ``nscfate models`` and the worker."""
        cards = []
        for e in sorted(self.entries, key=lambda e: (not e.default, e.name, _version_key(e.version))):
            card = read_model_dir(e.path, check=False).card()
            card["default"] = e.default
            cards.append(card)
        return cards

    def add(self, model_dir: str | os.PathLike, *, default: bool = False) -> RegistryEntry:
        """Register (or re-register) a model directory that lies under the registry root."""
        info = read_model_dir(model_dir, check=True)
        path = Path(model_dir).resolve()
        try:
            rel = path.relative_to(self.root.resolve())
        except ValueError:
            raise ModelError(f"{path} is not under the registry root {self.root}") from None
        entry = {"name": info.name, "version": info.version, "path": rel.as_posix(),
                 "sha256": sha256_file(path / CHECKSUMS_FILE)}
        raw = json.loads(self.file.read_text(encoding="utf-8")) if self.file.is_file() else {"models": []}
        raw["models"] = [e for e in raw.get("models", [])
                         if (e["name"], e["version"]) != (info.name, info.version)] + [entry]
        raw["models"].sort(key=lambda e: (e["name"], _version_key(e["version"])))
        if default or not raw.get("default"):
            raw["default"] = info.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps({"default": raw["default"], "models": raw["models"]}, indent=2) + "\n",
                             encoding="utf-8")
        self._load()
        return self.get(f"{info.name}@{info.version}")


def check_entry(entry: RegistryEntry) -> None:
    """:class:`ModelError` unless the entry's directory exists and its checksum list has the pinned hash."""
    listing = entry.path / CHECKSUMS_FILE
    if not listing.is_file():
        raise ModelError(f"registered model {entry.ref}: {listing} is missing")
    if sha256_file(listing) != entry.sha256:
        raise ModelError(f"registered model {entry.ref}: {entry.path} does not match the registry's hash")


def resolve(model: str | os.PathLike | None = None, registry: Registry | None = None) -> Path:
    """A model directory for ``model``: a path to a model directory, a registry ``name[@version]``, or
    ``None`` for the default model.

    Raises:
        UnknownModelError: neither a model directory nor a registered name.
    """
    if model is not None:
        path = Path(model)
        if (path / METADATA_FILE).is_file():
            return path
    reg = registry if registry is not None else Registry()
    entry = reg.get(None if model is None else os.fspath(model))
    check_entry(entry)
    return entry.path


_RELEASE = re.compile(r"(\d+(?:\.\d+)*)(.*)", re.DOTALL)


def _version_key(version: str) -> tuple:
    """Versions in order: the leading numbers compare as numbers ("1.10" > "1.9"); whatever follows
    them marks a pre-release ("1.0.0-rc1", "1.0.0rc2", "1.0.0-beta.2"), which comes before its
    release, as in SemVer and PEP 440; build metadata after "+" is left out."""
    release = _RELEASE.fullmatch(version.split("+", 1)[0].strip())
    numbers, tag = (tuple(int(p) for p in release.group(1).split(".")), release.group(2)) if release else ((), version)
    return numbers, 0 if tag else 1, tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower())
                                           for p in re.findall(r"\d+|[^\W\d_]+", tag))
