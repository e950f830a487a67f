"""Typed, validated training configuration.

Layers, each overriding the one before: the defaults below -> a YAML file (``--config run.yaml``) ->
command-line options (``--epochs 5``, or ``--set train.learning_rate=3e-4`` for any field). The result
is validated once, frozen, and saved into the run folder (``config.yaml``) and into the exported model
directory (``config.json``). Nothing mutates a shared default: sections are frozen dataclasses and
overrides build new ones (``dataclasses.replace``).

Sections and fields (YAML keys are the same names)::

    task: medium4 | astro_vs_oligo
    out: model directory to write            run_dir: checkpoints/logs (default: <out>.run)
    data:
      path: dataset (IFC export tree, root/<class>/ folders, or CSV manifest)
      channel: 1 (brightfield; marker channels are refused)
      split: random | grouped     val_fraction: 0.1   test_fraction: 0.2
      grouped_holdout: fraction of the images, in whole acquisition batches, kept out of training
                       entirely and reported as ``grouped_test`` next to the test set (0 = none)
      subsample: fraction of images used (1.0 = all)    seed: 0
      shuffle_buffer: 0 (the whole set, reshuffled every epoch; k = a window of k files)
      augment: true (random flips; also 90-degree turns when square)
    model:
      arch: cnn | mobilenet | vgg19 | inceptionv3 | resnet18 | resnet50
      input_size: [75, 75]        pretrained: null | imagenet | PATH    dropout: 0.2
    train:
      epochs: 30   batch_size: 64   optimizer: adam | sgd   learning_rate: 1e-3
      weight_decay: 1e-4   schedule: cosine | constant   warmup_epochs: 1
      label_smoothing: 0.0   class_weights: balanced | none
      early_stopping_patience: 6 (epochs without val improvement; 0 = off)
      steps_per_epoch: null (all)   mixed_precision: auto | on | off   distribute: auto | off
      seed: 0   eval_bootstrap: 1000 (bootstrap resamples for the held-out 95% intervals)
    export:
      name: null (default <arch>-<task>)   version: 1.0.0   weights_dtype: auto | float32 | float16
      description: free text for the model card    synthetic: null (auto: true for nscfate synth data)
      notes: extra Markdown for the card
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from nscfate.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    channel: int = 1
    split: Literal["random", "grouped"] = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    grouped_holdout: float = 0.0
    subsample: float = 1.0
    seed: int = 0
    shuffle_buffer: int = 0
    augment: bool = True

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required (--data DIR)")
        if self.channel < 1:
            raise ConfigError(f"data.channel must be >= 1, got {self.channel}")
        if not (0.0 < self.val_fraction < 0.5 and 0.0 < self.test_fraction < 0.5
                and self.val_fraction + self.test_fraction < 0.8):
            raise ConfigError("data.val_fraction and data.test_fraction must each be in (0, 0.5), together < 0.8")
        if not 0.0 < self.subsample <= 1.0:
            raise ConfigError(f"data.subsample must be in (0, 1], got {self.subsample}")
        if not 0.0 <= self.grouped_holdout < 0.5 or self.shuffle_buffer < 0:
            raise ConfigError("data.grouped_holdout must be in [0, 0.5) and data.shuffle_buffer >= 0 (0: the whole set)")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["cnn", "mobilenet", "vgg19", "inceptionv3", "resnet18", "resnet50"] = "resnet50"
    input_size: tuple[int, int] = (75, 75)
    pretrained: str | None = None
    dropout: float = 0.2

    def validate(self) -> None:
        from nscfate.preprocessing import parse_input_size

        parse_input_size(self.input_size)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pretrained not in (None, "imagenet") and not Path(self.pretrained).is_file():
            raise ConfigError(f"model.pretrained {self.pretrained!r} is neither 'imagenet' nor an existing file")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    class_weights: Literal["balanced", "none"] = "balanced"
    early_stopping_patience: int = 6
    steps_per_epoch: int | None = None
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    distribute: Literal["auto", "off"] = "auto"
    seed: int = 0
    eval_bootstrap: int = 1000

    def validate(self) -> None:
        if self.eval_bootstrap < 0:
            raise ConfigError("train.eval_bootstrap must be >= 0 (0 = no confidence intervals)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if not 0.0 < self.learning_rate < 10.0:
            raise ConfigError(f"train.learning_rate must be in (0, 10), got {self.learning_rate}")
        if self.weight_decay < 0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("train.weight_decay must be >= 0 and train.label_smoothing in [0, 1)")
        if self.warmup_epochs < 0 or self.early_stopping_patience < 0:
            raise ConfigError("train.warmup_epochs and train.early_stopping_patience must be >= 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError("train.steps_per_epoch must be >= 1 (or null for a full pass)")


@dataclass(frozen=True)
class ExportConfig:
    name: str | None = None
    version: str = "1.0.0"
    weights_dtype: Literal["auto", "float32", "float16"] = "auto"
    description: str = ""
    synthetic: bool | None = None
    notes: str = ""

    def validate(self) -> None:
        if self.name is not None and (not self.name or "@" in self.name or "/" in self.name):
            raise ConfigError(f"export.name {self.name!r} must be non-empty without '@' or '/'")
        if not self.version or "@" in self.version:
            raise ConfigError(f"export.version {self.version!r} must be non-empty without '@'")


@dataclass(frozen=True)
class RunConfig:
    task: Literal["medium4", "astro_vs_oligo"] = "medium4"
    out: str = ""
    run_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> "RunConfig":
        from nscfate.classes import get_task

        get_task(self.task)
        if not self.out:
            raise ConfigError("out is required (--out MODEL_DIR)")
        for section in (self.data, self.model, self.train, self.export):
            section.validate()
        return self

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(f"{self.out.rstrip('/')}.run")

    @property
    def model_name(self) -> str:
        return self.export.name or f"{self.model.arch}-{self.task}"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------- building

def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            from nscfate.preprocessing import parse_input_size

            return parse_input_size(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = tp(value) if not (tp is int and isinstance(value, str)) else int(value, 10)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}; "
                          f"known in {where.rstrip('.') or 'top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{where}{name}")
    return cls(**kwargs)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "model.arch=cnn"]`` -> nested dict (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict):  # "text: more text" is prose, not a mapping
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                set_values: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML ``file``, then ``overrides`` (nested dict from CLI options; ``None`` values
    are ignored so unset options do not override the file), then ``set_values`` (``--set KEY=VALUE``,
    where ``null`` does override); validated and frozen."""
    import yaml

    values: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(file)!r} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {os.fspath(file)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {os.fspath(file)!r} must hold a mapping")
        values = loaded or {}
    values = _merge(values, _drop_none(overrides or {}))
    values = _merge(values, parse_set(set_values or []))
    return _build(RunConfig, values).validate()


def _drop_none(d: dict) -> dict:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    """A new, validated config with top-level fields replaced."""
    return dataclasses.replace(config, **changes).validate()
