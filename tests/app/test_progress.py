"""Per-step progress reaches the client while the pipeline runs (the same stream drives the page's bar)."""

from __future__ import annotations

import threading
import time


class PausingPipeline:
    """The real tiny pipeline, paused after its first denoising step until the test has seen that step
    reported, so the check does not race a model that finishes in milliseconds."""

    def __init__(self, pipe):
        self.pipe, self.resume = pipe, threading.Event()

    def __call__(self, *args, callback_on_step_end, **kwargs):
        def callback(pipe, step, t, tensors):
            result = callback_on_step_end(pipe, step, t, tensors)
            if step == 0:
                self.resume.wait(timeout=60)
            return result

        return self.pipe(*args, callback_on_step_end=callback, **kwargs)


def test_each_denoising_step_is_reported(serve_pipeline):
    from gradio_client import Client

    from unoflux.testing import tiny_pipeline

    pipe = PausingPipeline(tiny_pipeline())
    job = Client(serve_pipeline(pipe), verbose=False).submit(
        prompt="a ball", width=32, height=32, steps=3, api_name="/generate"
    )
    try:
        deadline = time.monotonic() + 30
        while not any(unit.index == 1 and unit.length == 3 for unit in job.status().progress_data or []):
            assert time.monotonic() < deadline, f"no 'step 1 of 3' progress report; last status {job.status()}"
            time.sleep(0.05)
        assert job.status().progress_data[0].desc == "denoising"
    finally:
        pipe.resume.set()
    gallery, _, _ = job.result(timeout=60)
    assert len(gallery) == 1
