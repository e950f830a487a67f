"""Run the local host: ``python -m apphost --port 3030 [--host 127.0.0.1] [--no-worker] [--model M ...]``.

The server uplink key comes from ``ANVIL_UPLINK_KEY`` (and an optional client uplink key from
``ANVIL_CLIENT_UPLINK_KEY``). Unless ``--no-worker`` is given, one inference worker (``python -m uplink``)
is started as a subprocess and connected to this host; it gets the key through its environment, never
its command line. Without ``ANVIL_UPLINK_KEY`` a one-off key is made for that worker, so a plain
``python -m apphost`` works offline (other uplinks then cannot connect).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import time

logger = logging.getLogger("apphost")

#: Seconds the worker gets to finish its calls after SIGTERM before it is killed.
WORKER_STOP_GRACE = 30.0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (no heavy imports)."""
    parser = argparse.ArgumentParser(prog="python -m apphost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3030, help="port to listen on (default 3030; 0 picks one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--no-worker", action="store_true", help="do not start an inference worker")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="DIR_OR_NAME",
        help="model for the built-in worker (repeatable; default: the worker's default)",
    )
    parser.add_argument("--default-model", help="default model name for the built-in worker")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m apphost`` and ``nscfate-host``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    key = os.environ.get("ANVIL_UPLINK_KEY") or None
    if key is None and not args.no_worker:
        key = secrets.token_urlsafe(32)
        logger.info("ANVIL_UPLINK_KEY is not set: made a one-off key for the built-in worker only")
    elif key is None:
        logger.warning("ANVIL_UPLINK_KEY is not set: no server uplink can connect")

    from apphost.app import HostSettings

    settings = HostSettings(uplink_key=key, client_uplink_key=os.environ.get("ANVIL_CLIENT_UPLINK_KEY") or None)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; record them instead of dying before
    # the worker is stopped.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    return asyncio.run(_serve(args, settings))


async def _serve(args: argparse.Namespace, settings) -> int:
    import uvicorn

    from apphost.app import create_app
    from apphost.protocol import MAX_FRAME_BYTES

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=MAX_FRAME_BYTES,  # larger frames are refused by uvicorn, exactly 16 MiB by the hub
        log_level=args.log_level.lower(),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        serving.result()
        return 1
    port = server.servers[0].sockets[0].getsockname()[1]
    logger.info("Local host ready on http://%s:%d (uplink endpoint /_/uplink)", args.host, port)

    supervisor = None
    if not args.no_worker:
        supervisor = _WorkerSupervisor(_worker_command(args, port), settings.uplink_key)
        supervisor.start()
    try:
        await serving
    finally:
        if supervisor is not None:
            await supervisor.stop()
    return 0


def _worker_command(args: argparse.Namespace, port: int) -> list[str]:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    if ":" in host:
        host = f"[{host}]"
    command = [sys.executable, "-m", "uplink", "--url", f"ws://{host}:{port}/_/uplink"]
    for model in args.model:
        command += ["--model", model]
    if args.default_model:
        command += ["--default-model", args.default_model]
    return command


class _WorkerSupervisor:
    """Keeps one worker subprocess running; restarts it (with back-off) if it exits."""

    def __init__(self, command: list[str], key: str | None) -> None:
        self.command = command
        self.env = dict(os.environ)
        if key:
            self.env["ANVIL_UPLINK_KEY"] = key  # environment only: never argv, never logged
        self._task: asyncio.Task | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-supervisor")

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            self._proc = await asyncio.create_subprocess_exec(*self.command, env=self.env)
            logger.info("Started worker (pid %d)", self._proc.pid)
            code = await self._proc.wait()
            if self._stopping:
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 60.0)
            logger.warning("Worker exited with code %s; restarting in %.0f s", code, backoff)
            await asyncio.sleep(backoff)

    async def stop(self) -> None:
        """SIGTERM the worker, give it time to finish its calls, then kill it."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), WORKER_STOP_GRACE)
            except asyncio.TimeoutError:
                logger.warning("Worker did not stop within %.0f s; killing it", WORKER_STOP_GRACE)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()


if __name__ == "__main__":
    raise SystemExit(main())
