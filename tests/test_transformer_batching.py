"""The transformer's coalescing and its v2 binary codec, in process (no servers)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from food_transformer import v2binary
from food_transformer.batching import Coalescer


def test_callers_queued_during_a_call_share_the_next_one():
    async def scenario():
        gate = asyncio.Event()
        calls: list[list[int]] = []

        async def double(items: list[int]) -> list[int]:
            calls.append(items)
            if len(calls) == 1:
                await gate.wait()  # the first call is "in flight" while others queue
            return [2 * x for x in items]

        c = Coalescer(double, max_items=10)
        first = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(c.submit(items)) for items in ([2, 3], [4], [5, 6, 7])]
        await asyncio.sleep(0)
        gate.set()
        return await first, [await t for t in rest], calls

    first, rest, calls = asyncio.run(scenario())
    assert first == [2]
    assert rest == [[4, 6], [8], [10, 12, 14]]
    assert calls == [[1], [2, 3, 4, 5, 6, 7]]


def test_max_items_splits_between_callers_never_inside_one():
    async def scenario():
        gate = asyncio.Event()
        calls: list[list[int]] = []

        async def ident(items: list[int]) -> list[int]:
            calls.append(items)
            if len(calls) == 1:
                await gate.wait()
            return items

        c = Coalescer(ident, max_items=3)
        tasks = [asyncio.create_task(c.submit(x)) for x in ([0], [1, 2], [3, 4], [5, 6, 7, 8])]
        await asyncio.sleep(0)
        gate.set()
        return [await t for t in tasks], calls

    results, calls = asyncio.run(scenario())
    assert results == [[0], [1, 2], [3, 4], [5, 6, 7, 8]]
    assert calls == [[0], [1, 2], [3, 4], [5, 6, 7, 8]]  # [1, 2] + [3, 4] would be 4 > 3


def test_a_failed_call_fails_its_callers_and_the_next_call_still_runs():
    async def scenario():
        async def boom(items: list[int]) -> list[int]:
            if 0 in items:
                raise RuntimeError("predictor down")
            return items

        c = Coalescer(boom, max_items=1)
        bad = asyncio.create_task(c.submit([0]))
        good = asyncio.create_task(c.submit([1]))
        with pytest.raises(RuntimeError, match="predictor down"):
            await bad
        return await good

    assert asyncio.run(scenario()) == [1]


def test_v2_binary_request_and_response_round_trip():
    images = [np.random.default_rng(i).random((3, 4, 4), dtype=np.float32) for i in range(3)]
    body, head_len = v2binary.encode_request(images, "input", "logits", "id-1")
    import json

    head = json.loads(body[:head_len])
    assert head["inputs"][0]["shape"] == [3, 3, 4, 4] and head["id"] == "id-1"
    assert head["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]
    sent = np.frombuffer(body[head_len:], np.float32).reshape(3, 3, 4, 4)
    np.testing.assert_array_equal(sent, np.stack(images))

    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    other = np.ones(3, np.float32)
    out_head = json.dumps({"outputs": [
        {"name": "other", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 12}},
        {"name": "logits", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": 24}}]}).encode()
    reply = out_head + other.tobytes() + logits.tobytes()
    got = v2binary.decode_response(reply, {v2binary.HEADER_LENGTH: str(len(out_head))}, "logits")
    np.testing.assert_array_equal(got, logits)
    as_json = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [3, 2],
                                       "data": logits.ravel().tolist()}]}).encode()
    np.testing.assert_array_equal(v2binary.decode_response(as_json, {}, "logits"), logits)


def test_unreadable_predictor_response_is_an_inference_error():
    from kserve.errors import InferenceError

    with pytest.raises(InferenceError, match="unreadable"):
        v2binary.decode_response(b"<html>oops</html>", {}, "logits")


def test_max_inflight_runs_calls_side_by_side_and_merges_the_rest():
    async def scenario():
        gate = asyncio.Event()
        calls: list[list[int]] = []

        async def hold(items: list[int]) -> list[int]:
            calls.append(items)
            if len(calls) <= 2:
                await gate.wait()
            return items

        c = Coalescer(hold, max_items=10, max_inflight=2)
        a = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0)
        b = asyncio.create_task(c.submit([2]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        rest = [asyncio.create_task(c.submit([x])) for x in (3, 4)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running = list(calls)
        gate.set()
        return [await a, await b] + [await t for t in rest], running, calls

    results, running, calls = asyncio.run(scenario())
    assert results == [[1], [2], [3], [4]]
    assert running == [[1], [2]]  # two calls at once, neither waited for the other
    assert sorted(map(tuple, calls[2:])) == [(3, 4)]  # what queued meanwhile went together


def _predictor_answering(status: int, body: bytes):
    """A real aiohttp server whose v2 infer route answers ``status`` with ``body``."""
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    return app


@pytest.mark.parametrize("status, error, needle", [
    (503, "PredictorUnavailable", "model m is not ready"),  # Triton's words reach the client
    (400, "InferenceError", "unexpected shape"),
])
def test_predictor_error_status_maps_to_unavailable_or_inference_error(status, error, needle):
    """What the predictor answers decides the transformer's error (503 vs 500), with its message."""
    from aiohttp.test_utils import TestServer
    from kserve.errors import InferenceError
    from kserve.predictor_config import PredictorConfig

    from food_transformer.model import DecodedImages, FoodTransformer, PredictorUnavailable
    from food_transformer.spec import PartialSpec

    async def scenario():
        server = TestServer(_predictor_answering(status, f'{{"error": "{needle}"}}'.encode()))
        await server.start_server()
        config = PredictorConfig(predictor_host=f"127.0.0.1:{server.port}", predictor_protocol="v2")
        model = FoodTransformer("m", config, PartialSpec(image_size=8, class_names=("a", "b")))
        try:
            await model.predict(DecodedImages([np.zeros((3, 8, 8), np.float32)], None))
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            return exc
        finally:
            await model.aclose()
            await server.close()

    exc = asyncio.run(scenario())
    assert type(exc).__name__ == error and isinstance(exc, InferenceError if error == "InferenceError"
                                                      else PredictorUnavailable)
    assert needle in str(exc) and str(status) in str(exc)


def test_refused_connections_are_retried_then_reported():
    """predictor_request_retries extra attempts on a refused connection, then the error."""
    import aiohttp
    from helpers import free_port

    attempts = 0

    class CountingConnector(aiohttp.TCPConnector):
        async def connect(self, *args, **kwargs):
            nonlocal attempts
            attempts += 1
            return await super().connect(*args, **kwargs)

    async def scenario():
        async with aiohttp.ClientSession(connector=CountingConnector()) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await v2binary.infer(session, f"http://127.0.0.1:{free_port()}", "m",
                                     [np.zeros((3, 2, 2), np.float32)], "input", "logits", connect_retries=2)

    asyncio.run(scenario())
    assert attempts == 3
