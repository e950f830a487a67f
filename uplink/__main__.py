"""Run the inference worker: ``python -m uplink`` (or ``nscfate-worker``).

::

    ANVIL_UPLINK_KEY=... python -m uplink                         # hosted Anvil, all shipped models
    python -m uplink --url ws://127.0.0.1:3030/_/uplink --key-file ~/.nscfate-uplink.key \\
        --model models/resnet50-medium4 --model models/resnet18-astro_vs_oligo

The key comes from ``ANVIL_UPLINK_KEY`` or ``--key-file`` and is never logged. The worker loads each
model once, warms it up, connects, logs a line containing ``worker ready`` and serves until SIGTERM or
SIGINT; then it takes no new calls, finishes the ones in flight and exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger("uplink")

HOSTED_ANVIL_URL = "wss://anvil.works/uplink"
LOCAL_HOST_URL = "ws://127.0.0.1:3030/_/uplink"
READY = "worker ready"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (no heavy imports, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(
        prog="python -m uplink",
        description="NSC Fate inference worker: serves cell-fate predictions over Anvil Uplink.",
    )
    parser.add_argument(
        "--url",
        default=HOSTED_ANVIL_URL,
        help=f"uplink server (default hosted Anvil, {HOSTED_ANVIL_URL}; the local host is {LOCAL_HOST_URL})",
    )
    parser.add_argument("--key-file", type=Path, help="file holding the uplink key (default: $ANVIL_UPLINK_KEY)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="DIR_OR_NAME",
        help="model directory or registry name[@version] to serve (repeatable; default: every shipped model)",
    )
    parser.add_argument("--default-model", metavar="NAME", help="model used when a call names none (default: the first)")
    parser.add_argument("--max-batch", type=int, default=32, help="most images per model call (default 32)")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="most ms a batch waits for calls still decoding their images (default 5; a lone call never waits)"
    )
    parser.add_argument(
        "--drain-seconds", type=float, default=25.0, help="on SIGTERM, most seconds to finish calls in flight"
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=1.0,
        help="on SIGTERM, seconds to keep accepting calls already on the wire before refusing new ones",
    )
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow threads inside one operation (default 0: the cores this process may use)")
    parser.add_argument("--inter-op-threads", type=int, default=1,
                        help="TensorFlow operations run side by side (default 1: batches run one at a time)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--parent-pid", type=int,
                        help="stop when this process is gone (the local host passes its own: a host killed "
                             "outright must not leave its workers behind, to join the next one)")
    return parser


def read_key(key_file: Path | None) -> str:
    """The uplink key from ``key_file`` or ``$ANVIL_UPLINK_KEY``.

    Raises:
        SystemExit: no key, or the file cannot be read.
    """
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"cannot read the key file {key_file}: {exc.strerror}") from None
        if key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("key file %s is readable by other users; chmod 600 it", key_file)
    else:
        key = os.environ.get("ANVIL_UPLINK_KEY", "").strip()
    if not key:
        raise SystemExit("no uplink key: set ANVIL_UPLINK_KEY or pass --key-file (see docs/WORKER.md)")
    return key


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m uplink`` and ``nscfate-worker``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    key = read_key(args.key_file)
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise SystemExit("--max-batch must be at least 1 and --max-wait-ms at least 0")
    if args.intra_op_threads < 0 or args.inter_op_threads < 0:
        raise SystemExit("--intra-op-threads and --inter-op-threads must be 0 (TensorFlow's default) or more")

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        logger.info("got %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # Heavy imports (TensorFlow) only now, so --help and key errors are instant.
    import anvil.server

    try:
        code = _serve(args, key, stop, anvil.server)
    except Exception:
        logger.exception("worker failed")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # anvil-uplink leaves non-daemon threads behind (a heartbeat that sleeps 10 s, a reconnect loop
    # after a refusal); exit without waiting for them.
    os._exit(code)


def _serve(args: argparse.Namespace, key: str, stop: threading.Event, server) -> int:
    """Load, connect, serve until ``stop``, drain. Returns the exit status."""
    from nscfate.errors import InputError, ModelError
    from nscfate.predictor import set_cpu_threads
    from uplink.callables import CALLABLES, register_callables
    from uplink.framing import install_fast_masking
    from uplink.service import InferenceService, load_predictors

    if args.parent_pid:  # watched from the start: a host can die while its worker loads or connects
        threading.Thread(target=_stop_when_orphaned, args=(args.parent_pid, stop), daemon=True).start()
    set_cpu_threads(args.intra_op_threads, args.inter_op_threads)
    try:
        predictors = load_predictors(args.model)
        service = InferenceService(
            predictors, default_model=args.default_model, max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000
        )
    except (InputError, ModelError, ValueError) as exc:
        logger.error("cannot load the models: %s", exc)
        return 2
    service.warm_up()
    for p in predictors:
        logger.info("serving model %s@%s (%s; classes %s)", p.name, p.version, p.task, ", ".join(p.classes))
    register_callables(service)
    install_fast_masking()  # every reply crosses ws4py's frame masking

    if not _connect(server, key, args.url, stop):
        service.close()
        return 0 if stop.is_set() else 1
    logger.info("%s: %s at %s, default model %s", READY, ", ".join(CALLABLES), args.url, service.default_model)
    code = 0
    while not stop.wait(1.0):
        # anvil-uplink reconnects by itself, for ever, also when the server refuses the key (a host that
        # made a new one): exit instead, so that a supervisor starts the worker again with the key it has now.
        refused = getattr(server, "_fatal_error", None)
        if refused:
            logger.error("the uplink server refused this worker: %s", refused)
            code = 1
            break

    # Calls the server sent just before the signal may still be on the wire; keep accepting for a
    # moment so they run instead of failing with a disconnect, then refuse new ones (retryable error).
    time.sleep(args.settle_seconds)
    service.begin_shutdown()
    if not service.wait_idle(args.drain_seconds):
        logger.warning("calls still in flight after %.0f s; they will fail", args.drain_seconds)
    service.close()
    server.disconnect()
    logger.info("worker stopped")
    return code


def _stop_when_orphaned(parent_pid: int, stop: threading.Event) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent_pid`` (the host died)."""
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.warning("the host that started this worker (pid %d) is gone; stopping", parent_pid)
            stop.set()


def _connect(server, key: str, url: str, stop: threading.Event) -> bool:
    """Connect, retrying while the server cannot be reached (the library only retries connections
    that were once up). ``False`` if the server refused us or we were asked to stop."""
    delay = 1.0
    while not stop.is_set():
        try:
            server.connect(key, url=url)
            # The round trip proves the key was accepted: a refusal surfaces here as "fatal error".
            server.call("anvil.private.echo", "hello")
            return True
        except Exception as exc:  # noqa: BLE001 - report and decide below
            message = str(exc)
            if "fatal error" in message.lower():
                logger.error("the uplink server refused this worker: %s", message.split(":", 1)[-1].strip())
                server.disconnect()
                return False
            logger.warning("cannot reach %s (%s); retrying in %.0f s", url, type(exc).__name__, delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
    return False


if __name__ == "__main__":
    raise SystemExit(main())
