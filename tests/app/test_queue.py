"""Ten concurrent API clients against a one-worker app with a short queue: every client gets an image or
a clear "queue is full", none hangs, and the server keeps serving afterwards."""

from __future__ import annotations

import threading
import time

from PIL import Image

CLIENTS, MAX_QUEUE = 10, 3
TINY = dict(width=32, height=32, steps=2)


class GatedPipeline:
    """The real tiny pipeline, but each call first waits for ``gate``: it holds the single worker busy
    while the other clients arrive, so the queue really fills (instead of racing a fast model)."""

    def __init__(self, pipe, gate: threading.Event):
        self.pipe, self.gate = pipe, gate

    def __call__(self, *args, **kwargs):
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return self.pipe(*args, **kwargs)


def wait_until_answered(jobs, timeout: float = 30) -> None:
    """Until the server has queued, started or refused every job."""
    from gradio_client.utils import Status

    deadline = time.monotonic() + timeout
    while any(job.status().code in (Status.STARTING, Status.JOINING_QUEUE) for job in jobs):
        assert time.monotonic() < deadline, "the server never answered some clients"
        time.sleep(0.05)


def outcome(job) -> str:
    """'image', or 'queue full' for a clear refusal; anything else fails the test."""
    try:
        gallery, _, _ = job.result(timeout=60)  # a hang fails here instead of blocking the suite
    except Exception as err:
        assert "queue is full" in str(err).lower(), f"unexpected answer: {err!r}"
        return "queue full"
    assert Image.open(gallery[0]["image"]).size == (32, 32)
    return "image"


def test_ten_concurrent_clients_get_an_image_or_queue_full(serve_pipeline):
    from gradio_client import Client

    from unoflux.testing import tiny_pipeline

    gate = threading.Event()
    url = serve_pipeline(GatedPipeline(tiny_pipeline(), gate), concurrency=1, max_queue=MAX_QUEUE)
    clients = [Client(url, verbose=False) for _ in range(CLIENTS)]  # connect first, then submit in a burst
    jobs = [client.submit(prompt=f"ball {i}", **TINY, api_name="/generate") for i, client in enumerate(clients)]
    try:
        wait_until_answered(jobs)
    finally:
        gate.set()
    outcomes = [outcome(job) for job in jobs]

    assert 1 <= outcomes.count("image") <= 1 + MAX_QUEUE  # one running, at most MAX_QUEUE waiting
    assert outcomes.count("queue full") >= CLIENTS - 1 - MAX_QUEUE
    gallery, _, _ = Client(url, verbose=False).predict(prompt="after the burst", **TINY, api_name="/generate")
    assert Image.open(gallery[0]["image"]).size == (32, 32)
