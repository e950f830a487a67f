import dataclasses

import pytest

from nscfate.config import RunConfig, load_config, parse_set
from nscfate.errors import ConfigError


def test_layers_defaults_file_cli_set(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("task: astro_vs_oligo\nout: m\ndata: {path: d, split: grouped}\n"
                    "model: {arch: cnn, input_size: 45x60}\ntrain: {epochs: 3, learning_rate: 0.01}\n")
    cfg = load_config(file, overrides={"train": {"epochs": 7, "batch_size": None}},
                      set_values=["train.learning_rate=3e-4", "model.pretrained=null"])
    assert cfg.task == "astro_vs_oligo" and cfg.data.split == "grouped"
    assert cfg.model.input_size == (45, 60) and cfg.model.arch == "cnn"
    assert cfg.train.epochs == 7  # CLI over file
    assert cfg.train.batch_size == 64  # unset CLI option leaves the default
    assert cfg.train.learning_rate == pytest.approx(3e-4)  # --set over everything
    assert cfg.run_path.name == "m.run" and cfg.model_name == "cnn-astro_vs_oligo"


def test_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(overrides={"out": "m", "data": {"path": "d"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 1
    file = tmp_path / "config.yaml"
    file.write_text(cfg.to_yaml())
    assert load_config(file) == cfg
    assert RunConfig().train.epochs == 30  # defaults untouched


@pytest.mark.parametrize("overrides,match", [
    ({"model": {"arch": "alexnet"}}, "model.arch must be one of"),
    ({"train": {"epochs": 0}}, "epochs"),
    ({"train": {"epochs": "many"}}, "train.epochs must be an integer"),
    ({"task": "medium9"}, "task must be one of"),
    ({"data": {"path": "d", "subsample": 1.5}}, "subsample"),
    ({"data": {"path": "d", "splitt": "random"}}, "unknown config key"),
    ({"model": {"input_size": "huge"}}, "HEIGHTxWIDTH"),
    ({"model": {"pretrained": "/no/such/file.h5"}}, "pretrained"),
    ({"data": {"path": ""}}, "data.path is required"),
])
def test_bad_values_are_config_errors(overrides, match):
    base = {"out": "m", "data": {"path": "d"}}
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=base)


def test_parse_set():
    assert parse_set(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
    with pytest.raises(ConfigError):
        parse_set(["novalue"])
