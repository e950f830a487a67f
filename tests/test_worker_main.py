"""``python -m uplink``'s serving loop ends by itself where staying would do harm: a server that refused
it (a host that made a new key), or a host that started it and is gone (killed outright)."""

import os
import threading

import pytest


@pytest.fixture
def worker(monkeypatch):
    import uplink.__main__ as worker

    monkeypatch.setattr("uplink.callables.register_callables", lambda service: None)  # not in this process's anvil
    monkeypatch.setattr("nscfate.predictor.set_cpu_threads", lambda *a: None)  # TensorFlow is running already
    monkeypatch.setattr("uplink.framing.install_fast_masking", lambda: None)
    return worker


class Server:
    """Connects and answers the echo; ``_fatal_error`` as anvil-uplink sets it when a reconnection is refused."""

    _fatal_error = None

    def __init__(self):
        self.disconnected = False

    def connect(self, key, url):
        pass

    def call(self, name, *args):
        return args[0]

    def disconnect(self):
        self.disconnected = True


def test_a_worker_the_server_refuses_after_it_was_connected_exits_with_status_1(worker, tiny_model):
    server = Server()
    threading.Timer(0.5, lambda: setattr(server, "_fatal_error", "Incorrect uplink key")).start()
    args = worker.build_parser().parse_args(["--model", str(tiny_model), "--settle-seconds", "0"])
    assert worker._serve(args, "key", threading.Event(), server) == 1
    assert server.disconnected


def test_a_worker_whose_host_is_gone_stops(worker, tiny_model):
    not_the_parent = os.getppid() + 1_000_000  # as after the host died: the worker's parent is someone else
    args = worker.build_parser().parse_args(["--model", str(tiny_model), "--settle-seconds", "0",
                                             "--parent-pid", str(not_the_parent)])
    stop = threading.Event()
    assert worker._serve(args, "key", stop, Server()) == 0 and stop.is_set()
    # also while it cannot reach the host yet (connecting): the watch runs from the start
    unreachable = Server()
    unreachable.connect = lambda key, url: (_ for _ in ()).throw(ConnectionRefusedError())
    stop = threading.Event()
    assert worker._serve(args, "key", stop, unreachable) == 0 and stop.is_set()
    args = worker.build_parser().parse_args(["--model", str(tiny_model), "--settle-seconds", "0",
                                             "--parent-pid", str(os.getppid())])
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()  # its host is there: it serves until asked to stop
    assert worker._serve(args, "key", stop, Server()) == 0 and stop.is_set()
