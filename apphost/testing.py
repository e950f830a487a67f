"""Helpers for tests of the Anvil side: a local runtime on a temporary database and a fake worker.

The fake worker stands in for the uplink worker's callables (per docs/DEVELOPING.md) so server modules
can be tested without a model; it is deterministic and records what it was asked.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anvil
import anvil.server
import argon2

from apphost.runtime import AppRuntime, create_runtime
from apphost.users import LoginRateLimiter

REPO_ROOT = Path(__file__).resolve().parent.parent
CLASSES = [("astro", "Astrocyte medium"), ("oligo", "Oligodendrocyte medium"),
           ("rashh", "RA + SHH (neuronal)"), ("nt3", "NT-3 (neuronal)")]


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A small valid greyscale PNG whose pixels depend on ``seed``."""
    raw = b"".join(b"\x00" + bytes((seed * 31 + x * 7 + y * 13) % 256 for x in range(size)) for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class UnknownModelError(anvil.server.AnvilWrappedError):
    """Stands in for uplink.errors.UnknownModelError (its type name ends the same way)."""


# A name of its own (not uplink's, which would be replaced process-wide); server code matches the suffix.
anvil.server._register_exception_type("apphost.testing.UnknownModelError", UnknownModelError)


@dataclass
class FakeWorker:
    """``call(name, *args, **kwargs)`` answering like the uplink worker.

    The predicted class is derived from the image bytes' hash; an image whose bytes contain ``BAD``
    gets a per-image error entry, as the worker returns for an undecodable image, and one whose bytes
    contain ``NOCELL`` the worker's "no cell found" warning. ``fail`` makes every
    call raise as when no worker is connected; ``fail_after`` lets that many batch calls succeed, then
    the worker goes away during calls (and never comes back).
    """

    model_name: str = "tiny-medium4"
    model_version: str = "1.0.0"
    fail: bool = False
    fail_after: int | None = None
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        if self.fail:
            raise anvil.server.NoServerFunctionError(f'No server function matching "{name}" has been registered')
        handlers = {"predict_cell_fate_batch": self.predict_batch, "predict_cell_fate": self.predict,
                    "list_models": self.list_models}
        if name not in handlers:
            raise anvil.server.NoServerFunctionError(f'No server function matching "{name}" has been registered')
        return handlers[name](*args, **kwargs)

    def _check_model(self, model: str | None) -> None:
        if model not in (None, self.model_name):
            raise UnknownModelError(f"unknown model {model!r}; available: {self.model_name}")

    def _result(self, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).digest()
        winner = digest[0] % len(CLASSES)
        probs = {key: (0.7 if i == winner else 0.1) for i, (key, _) in enumerate(CLASSES)}
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "predicted_class": CLASSES[winner][0],
            "predicted_display_name": CLASSES[winner][1],
            "confidence": 0.7,
            "classes": [{"key": k, "display_name": d} for k, d in CLASSES],
            "probabilities": probs,
            "warnings": (["no cell found: the image is nearly uniform (empty, flat or badly out of focus)"]
                         if b"NOCELL" in data else ["colour image converted to grey"] if digest[1] % 4 == 0 else []),
            "timings_ms": {"total": 1.0},
            "image": {"format": "png"},
        }

    def predict_batch(self, images: list[anvil.Media], model: str | None = None) -> list[dict[str, Any]]:
        self._check_model(model)
        if self.fail_after is not None and len(self.batch_sizes) >= self.fail_after:
            raise anvil.server.UplinkDisconnectedError("Connection to Anvil Uplink server lost")
        self.batch_sizes.append(len(images))
        out = []
        for index, media in enumerate(images):
            data = media.get_bytes()
            if b"BAD" in data:  # as the worker's per-image error entry (uplink/service.py predict_batch)
                out.append({"error": {"code": "corrupt", "message": "The image data is corrupt"}, "index": index,
                            "filename": media.name})
            else:
                out.append(self._result(data))
        return out

    def predict(self, image: anvil.Media, model: str | None = None, explain: bool = False) -> dict[str, Any]:
        self._check_model(model)
        result = self._result(image.get_bytes())
        if explain:
            result["gradcam"] = anvil.BlobMedia("image/png", png_bytes(99), name="gradcam.png")
        return result

    def list_models(self, plots: bool = False) -> list[dict[str, Any]]:
        # the fields of the worker's cards (Predictor.card() + default, plots; tests/test_client_cards.py
        # checks that they stay the same)
        return [{"name": self.model_name, "version": self.model_version, "task": "medium4", "arch": "tiny-cnn",
                 "classes": [{"key": k, "display_name": d} for k, d in CLASSES], "input_size": [32, 32],
                 "trained_on": "synthetic IFC-like benchmark", "synthetic_training_data": True,
                 "test_accuracy": 0.9, "test_split": "random", "grouped_test_accuracy": 0.85, "created": "2024-05-01T00:00:00+00:00",
                 "low_confidence_threshold": 0.5, "default": True, "plots": []}]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (for tests, benchmarks and scripts that start a host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_session(base_url: str, email: str, password: str, *, timeout: float = 60.0) -> Any:
    """An ``httpx.Client`` signed in the way the web UI is: session cookie, and the CSRF token and
    ``X-Requested-With`` sent with every request."""
    import httpx

    c = httpx.Client(base_url=base_url, timeout=timeout, headers={"X-Requested-With": "fetch"})
    r = c.post("/_/auth/login", json={"email": email, "password": password})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def fast_hasher() -> argon2.PasswordHasher:
    """Argon2 with tiny costs: the real algorithm, fast enough for tests."""
    return argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def make_runtime(tmp_path: Path, call: Any, *, db_url: str | None = None,
                 host_functions: dict[str, Any] | None = None, app_dir: Path = REPO_ROOT,
                 limiter: LoginRateLimiter | None = None) -> AppRuntime:
    """The app's server code on a fresh database under ``tmp_path`` (fast password hashing)."""
    return create_runtime(app_dir, db_url=db_url or f"sqlite:///{tmp_path / 'app.db'}", media_dir=tmp_path / "media",
                          call=call, host_functions=host_functions,
                          accounts_options={"hasher": fast_hasher(), "limiter": limiter}, max_workers=4)


def serve_fake_worker(url: str) -> None:
    """Run ``FakeWorker`` as a real anvil-uplink worker (key from ``ANVIL_UPLINK_KEY``) until killed."""
    import os

    worker = FakeWorker()

    @anvil.server.callable("predict_cell_fate_batch")
    def predict_cell_fate_batch(images: list[anvil.Media], model: str | None = None) -> list[dict[str, Any]]:
        return worker.predict_batch(images, model)

    @anvil.server.callable("predict_cell_fate")
    def predict_cell_fate(image: anvil.Media, model: str | None = None, explain: bool = False) -> dict[str, Any]:
        return worker.predict(image, model, explain)

    @anvil.server.callable("list_models")
    def list_models(plots: bool = False) -> list[dict[str, Any]]:
        return worker.list_models(plots)

    anvil.server.connect(os.environ["ANVIL_UPLINK_KEY"], url=url, quiet=True)
    anvil.server.wait_forever()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A fake NSC Fate worker on the real anvil-uplink client.")
    parser.add_argument("--url", required=True, help="the uplink URL, e.g. ws://127.0.0.1:3030/_/uplink")
    serve_fake_worker(parser.parse_args().url)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed here, or cannot be run (as root, without a ``postgres`` user)."""


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server programs (newest version), or of initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL server on a loopback port in a temporary directory; yields its URL.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
    (created by Debian's package). fsync is off: the data is thrown away.
    """
    bindir = postgres_bin()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL is not installed (scripts/test-setup.sh installs Debian's postgresql)")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    root = Path(tempfile.mkdtemp(prefix="nscfate-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    run_as: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    data, log = root / "data", root / "server.log"
    port = free_port()
    try:
        subprocess.run([bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=root, **run_as)
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        subprocess.run([bindir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"],
                       check=True, capture_output=True, cwd=root, **run_as)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {detail}\n{server_log}") from None
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, cwd=root,
                       **run_as)
        shutil.rmtree(root, ignore_errors=True)


def reset_postgres(url: str) -> str:
    """Empty a scratch PostgreSQL database (drops its public schema!) and return the URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    return url
