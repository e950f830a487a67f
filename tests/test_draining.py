"""A stop lets the requests in progress finish while the websockets (the workers' uplinks) stay open, then
stops the workers, then closes the rest (apphost.draining)."""

import asyncio
import time

import httpx
import uvicorn
import websockets

from apphost.draining import DrainingServer, InFlightRequests
from apphost.testing import free_port


async def lifespan(receive, send):
    """The ASGI lifespan protocol, with nothing to start or stop."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def test_requests_in_progress_finish_before_the_workers_and_websockets_go():
    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await asyncio.sleep(1.0)  # an upload being classified
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"classified"})
            events.append("request answered")
        else:  # a worker's uplink
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
            events.append("websocket closed")

    async def stop_workers():
        events.append(f"workers stopped with {requests.count} request(s) in progress")

    async def scenario():
        port = free_port()
        config = uvicorn.Config(requests, host="127.0.0.1", port=port, lifespan="on", log_config=None)
        server = DrainingServer(config, grace=10, before_close=stop_workers)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as uplink, httpx.AsyncClient() as client:
            upload = asyncio.create_task(client.post(f"http://127.0.0.1:{port}/upload", timeout=30))
            while not requests.count:
                await asyncio.sleep(0.01)
            server.should_exit = True  # what SIGINT or SIGTERM does
            response = await upload
            assert (response.status_code, response.text) == (200, "classified")
            await serving
            assert uplink.close_code is not None

    requests = InFlightRequests(app)
    asyncio.run(scenario())
    assert events[:2] == ["request answered", "workers stopped with 0 request(s) in progress"]
    assert events[2:] == ["websocket closed"]


def test_a_second_interrupt_ends_the_wait():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await asyncio.sleep(30)  # a request that would hold the stop for the whole grace

    async def scenario():
        port = free_port()
        server = DrainingServer(uvicorn.Config(InFlightRequests(app), host="127.0.0.1", port=port,
                                               lifespan="on", log_config=None), grace=60)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            stuck = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/", timeout=60))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            server.should_exit = True
            await asyncio.sleep(0.3)
            server.force_exit = True  # a second Ctrl-C
            await asyncio.wait_for(serving, 15)
            stuck.cancel()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 10
