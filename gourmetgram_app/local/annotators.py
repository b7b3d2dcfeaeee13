"""SIMULATED annotators: Label Studio's API standing in for people labelling the queue.

What a labelling team does, every few seconds: the policy's choice goes to Label Studio (``loop
queue``), someone opens each new task and picks the class, the annotations come back into the
loop store (``loop sync``). Here the "someone" is this module: it knows the true class of the
photos the simulation sent (``truth``: inference id -> class name) and answers only those; a
task it has no truth for stays open, as it would for a person who cannot tell. Everything else
is the real path: the real policy, the real Label Studio project and API, the real sync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from gourmetgram.loop.labelstudio import FROM_NAME, TO_NAME, LabelQueue, LabelStudioUnavailable

SIMULATED = "[SIMULATED ANNOTATORS]"


class SimulatedAnnotators:
    """``round()`` once: queue -> push -> annotate what it knows -> pull. As a context manager,
    a round every ``every_s`` seconds in a thread until the block ends."""

    def __init__(self, queue: LabelQueue, policy, truth: Callable[[], Mapping[str, str]],
                 every_s: float = 5.0, out: Callable[[str], None] = print) -> None:
        self.queue, self.policy, self.truth, self.every_s, self.out = queue, policy, truth, every_s, out
        self.labelled = 0  # annotations made
        self.synced = 0  # labels created in the loop store
        self._seen = 0  # the newest task id looked at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-annotators", daemon=True)

    def round(self) -> dict[str, int]:
        from gourmetgram.loop.policy import queue_samples

        queued = len(queue_samples(self.queue.store, self.policy))
        pushed = self.queue.push()
        known = self.truth()
        ls = self.queue.ls
        labelled = 0
        # Only tasks not looked at before: a photo's truth is known before its task exists (the
        # simulation records what it sent; the policy queues it later), so a task passed over
        # once stays open, as it would for a person who cannot tell.
        for task in self.queue.open_tasks(after_id=self._seen):
            self._seen = max(self._seen, int(task.id))
            answer = known.get((task.data or {}).get("sample_id", ""))
            if answer is None:
                continue
            ls.annotations.create(id=task.id, result=[{"from_name": FROM_NAME, "to_name": TO_NAME,
                                                       "type": "choices", "value": {"choices": [answer]}}])
            labelled += 1
        pulled = self.queue.pull() if labelled else {"created": 0}
        self.labelled += labelled
        self.synced += pulled["created"]
        return {"queued": queued, "pushed": pushed, "labelled": labelled, "synced": pulled["created"]}

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                done = self.round()
            except LabelStudioUnavailable as exc:
                self.out(f"{SIMULATED} Label Studio unavailable ({exc}); trying again")
                continue
            except Exception as exc:  # noqa: BLE001 - a failed round is retried, never the demo's end
                self.out(f"{SIMULATED} round failed ({type(exc).__name__}: {exc}); trying again")
                continue
            if done["labelled"]:
                self.out(f"{SIMULATED} labelled {done['labelled']} task(s) in Label Studio "
                         f"({done['pushed']} new in the queue); synced {done['synced']} label(s) into the loop store")

    def __enter__(self) -> "SimulatedAnnotators":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
