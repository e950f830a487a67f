"""The worker's command line: key handling (no model, no network)."""

import logging
import os

import pytest

from uplink.__main__ import build_parser, read_key


def test_key_from_file_is_stripped_and_a_loose_file_is_warned_about(tmp_path, caplog):
    key_file = tmp_path / "uplink.key"
    key_file.write_text("server_ABC123\n")
    os.chmod(key_file, 0o600)
    with caplog.at_level(logging.WARNING):
        assert read_key(key_file) == "server_ABC123"
    assert not caplog.records
    os.chmod(key_file, 0o644)
    with caplog.at_level(logging.WARNING):
        assert read_key(key_file) == "server_ABC123"
    assert "readable by other users" in caplog.text
    assert "server_ABC123" not in caplog.text


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("ANVIL_UPLINK_KEY", " server_XYZ ")
    assert read_key(None) == "server_XYZ"


def test_missing_key_or_unreadable_file_exits_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("ANVIL_UPLINK_KEY", raising=False)
    with pytest.raises(SystemExit, match="no uplink key: set ANVIL_UPLINK_KEY or pass --key-file"):
        read_key(None)
    with pytest.raises(SystemExit, match="cannot read the key file"):
        read_key(tmp_path / "missing.key")
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="no uplink key"):
        read_key(empty)


def test_defaults_point_at_hosted_anvil():
    args = build_parser().parse_args([])
    assert args.url == "wss://anvil.works/uplink"
    assert (args.max_batch, args.max_wait_ms, args.model) == (32, 5.0, [])


def test_thread_settings_default_to_one_batch_at_a_time_and_are_checked(monkeypatch):
    from uplink.__main__ import main

    args = build_parser().parse_args([])
    assert (args.intra_op_threads, args.inter_op_threads) == (0, 1)
    monkeypatch.setenv("ANVIL_UPLINK_KEY", "server_XYZ")
    with pytest.raises(SystemExit, match="--intra-op-threads and --inter-op-threads must be 0"):
        main(["--inter-op-threads", "-1"])


def test_set_cpu_threads_sizes_tensorflows_pools():
    import subprocess
    import sys

    code = ("from nscfate.predictor import set_cpu_threads; set_cpu_threads(intra_op=1, inter_op=1); "
            "import tensorflow as tf; t = tf.config.threading; "
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.stdout.split() == ["1", "1"], out.stderr[-2000:]
