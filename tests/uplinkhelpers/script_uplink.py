"""A small uplink script on the real anvil-uplink client, for the hub's protocol tests.

Run as ``python tests/uplinkhelpers/script_uplink.py --url URL --tag NAME``; the key comes from
``ANVIL_UPLINK_KEY``. With ``--check`` it only connects, makes one keep-alive call, prints the outcome and
exits (for the wrong-key tests).
"""

import argparse
import hashlib
import logging
import os
import sys
import time

import anvil
import anvil.server

logger = logging.getLogger("script_uplink")


def pattern_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes of length n."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps = -(-n // len(block)) if n else 0
    return (block * reps)[:n]


class ScriptError(anvil.server.AnvilWrappedError):
    """A registered error type, as the worker's user-fault errors are."""


anvil.server._register_exception_type("tests.ScriptError", ScriptError)


def register(tag: str, extra: list[str]) -> None:
    @anvil.server.callable
    def echo(*args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    @anvil.server.callable
    def whoami():
        return tag

    @anvil.server.callable
    def media_info(media):
        try:
            data = media.get_bytes()
        except Exception as exc:  # the transfer failed: report what the function saw
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "name": media.name,
            "content_type": media.content_type,
        }

    @anvil.server.callable
    def make_media(n, seed=0):
        return {"blob": anvil.BlobMedia("application/octet-stream", pattern_bytes(n, seed), name="blob.bin")}

    @anvil.server.callable
    def reverse_media(media):
        return anvil.BlobMedia(media.content_type, media.get_bytes()[::-1], name="reversed-" + (media.name or ""))

    @anvil.server.callable
    def fail(kind):
        if kind == "registered":
            raise ScriptError("a registered error")
        raise ValueError("plain failure")

    @anvil.server.callable
    def hold(seconds):
        time.sleep(seconds)
        return tag

    @anvil.server.callable
    def big_string(n):
        return "x" * n

    @anvil.server.callable
    def call_other(name, *args):
        return anvil.server.call(name, *args)

    @anvil.server.callable("regex_[a-z]+")
    def by_pattern():
        return tag

    # Registered last, so that once the hub lists an extra name it has all the others too.
    for name in extra:
        # A function only this uplink serves: sleeps, then says who answered.
        def only_me(seconds=0):
            time.sleep(seconds)
            return tag

        anvil.server.callable(name)(only_me)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", default="script")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--check-call", metavar="NAME", help="with --check: call NAME() instead of the echo")
    parser.add_argument("--no-functions", action="store_true")
    parser.add_argument("--extra", action="append", default=[], help="also register NAME(seconds=0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stdout)
    key = os.environ["ANVIL_UPLINK_KEY"]
    if not args.no_functions:
        register(args.tag, args.extra)
    anvil.server.connect(key, url=args.url)
    if args.check:
        try:
            if args.check_call:
                result = anvil.server.call(args.check_call)
            else:
                result = anvil.server.call("anvil.private.echo", "ping")
            print(f"CHECK OK {result}", flush=True)
        except Exception as exc:
            print(f"CHECK FAILED {type(exc).__name__}: {exc}", flush=True)
        os._exit(0)
    logger.info("READY %s", args.tag)
    anvil.server.wait_forever()


if __name__ == "__main__":
    main()
