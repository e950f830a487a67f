"""A worker on the real anvil-uplink client that stalls on cue, so a test can kill it in the middle of a
batch deterministically.

    python -m tests.fault_uplink --url ws://127.0.0.1:PORT/_/uplink --hold-after N --marker FILE

answers ``predict_cell_fate_batch`` like ``apphost.testing.FakeWorker`` for the first ``N`` calls; call
``N + 1`` writes ``FILE`` (the call is now in the worker) and never returns. The key comes from
``ANVIL_UPLINK_KEY``.
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path
from typing import Any

import anvil
import anvil.server

from apphost.testing import FakeWorker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--hold-after", type=int, required=True, help="batch calls answered before one stalls")
    parser.add_argument("--marker", type=Path, required=True, help="file written when the stalling call arrives")
    args = parser.parse_args()
    worker = FakeWorker(model_name="fault-medium4")
    answered = [0]
    lock = threading.Lock()

    @anvil.server.callable("predict_cell_fate_batch")
    def predict_cell_fate_batch(images: list[anvil.Media], model: str | None = None) -> list[dict[str, Any]]:
        with lock:
            hold = answered[0] >= args.hold_after
            answered[0] += 1
        if hold:
            args.marker.write_text(str(len(images)))
            threading.Event().wait()  # stall until killed
        return worker.predict_batch(images, model)

    @anvil.server.callable("list_models")
    def list_models(plots: bool = False) -> list[dict[str, Any]]:
        return worker.list_models(plots)

    anvil.server.connect(os.environ["ANVIL_UPLINK_KEY"], url=args.url, quiet=True)
    anvil.server.wait_forever()


if __name__ == "__main__":
    main()
