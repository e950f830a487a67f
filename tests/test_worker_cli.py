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
