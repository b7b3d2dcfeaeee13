"""Soak: the whole loop at half of its peak for a long time; memory, latency per window, nothing lost.

Starts what ``gourmetgram serve --stage production --loop`` runs (PyTriton, the transformer, the
gateway with its inference logger, the broker, the capture sink + feedback API, the drift
detector, Prometheus; all supervised) on free ports, then:

1. **peak of the whole loop**: ``--peak-users`` users without pause for ``--peak-seconds``
   through the gateway; the peak is the smaller of the good answers per second and the
   predictions captured whole per second over the same window (the logger is asynchronous, so
   serving alone can outrun capture; a rate the capture sink cannot follow would only grow a
   backlog). The backlog is delivered before the soak starts. ``--rate`` skips this;
2. **soak**: predictions offered at half of the peak on a fixed schedule (open loop: each
   latency counts from the request's scheduled time, so queueing shows) for ``--minutes``;
   a ``--feedback-share`` of the answers gets user feedback (``POST /v1/feedback``);
3. prints each process's resident memory (RSS, its whole process group: tritonserver and its
   stubs count for Triton) at the start and the end of the soak, and p50/p95/max latency per
   ``--window`` minutes;
4. waits until nothing is in flight between the gateway and the capture sink and checks that
   every prediction served (200) was captured whole, with no event dropped by the logger or
   the broker: exit 1 when not (or when a prediction or a feedback failed).

Usage::

    python benchmarks/soak.py [--minutes 30] [--window 5] [--bundle DIR] [--rate R]
        [--feedback-share 0.1] [--json out.json]

A measurement on a shared machine: figures depend on its load (printed), compare windows of
one run. ``--minutes 3 --window 1`` is a quick run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import load_images, percentile, resolve_bundle  # noqa: E402

from gourmetgram.bundle import Bundle  # noqa: E402
from gourmetgram.constants import MODEL_NAME, PRODUCTION  # noqa: E402
from gourmetgram.tracking import home  # noqa: E402
from gourmetgram_app.local.faults import group_members  # noqa: E402
from gourmetgram_app.local.loop import (  # noqa: E402
    Accounting,
    LoopServices,
    account,
    captured_ids,
    wait_delivered,
)
from gourmetgram_app.local.ports import Ports  # noqa: E402
from gourmetgram_app.local.stack import LocalStack  # noqa: E402
from gourmetgram_app.local.supervisor import SIDE  # noqa: E402
from gourmetgram_app.local.traffic import v1_body  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Answer:
    due: float  # scheduled time (monotonic)
    latency_ms: float  # from the scheduled time
    status: int  # -1: no answer (connection failed)
    inference_id: str | None


@dataclasses.dataclass(frozen=True)
class WindowStats:
    index: int
    requests: int
    errors: int
    rate: float
    p50_ms: float
    p95_ms: float
    max_ms: float



def windows(answers: Sequence[Answer], start: float, window_s: float) -> list[WindowStats]:
    """Latency and errors per window of ``window_s`` seconds from ``start`` (by scheduled time)."""
    out: list[WindowStats] = []
    if not answers:
        return out
    count = int((max(a.due for a in answers) - start) // window_s) + 1
    for k in range(count):
        inside = [a for a in answers if start + k * window_s <= a.due < start + (k + 1) * window_s]
        good = [a.latency_ms for a in inside if a.status == 200]
        out.append(WindowStats(k, len(inside), len(inside) - len(good), len(inside) / window_s,
                               percentile(good, 50), percentile(good, 95), max(good, default=float("nan"))))
    return out


def rss_mib(pgid: int | None) -> float:
    """Resident memory of every process in process group ``pgid`` (a supervised component)."""
    if pgid is None:
        return float("nan")
    total_kib = 0
    for pid, _comm in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def memory(stack: LocalStack) -> dict[str, float]:
    return {c.key: rss_mib(c.pid) for c in stack.supervisor.components() if c.state != "stopped"}


def peak_rates(url: str, images: Sequence[bytes], users: int, seconds: float,
               captured: Callable[[], int]) -> tuple[float, float]:
    """Good answers per second with ``users`` sending back to back (after a short lead), and
    predictions captured whole per second over the same window (``captured()`` counts them)."""
    import httpx

    stop, good, lock = threading.Event(), [0], threading.Lock()
    measuring = threading.Event()

    def user(k: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = k
            while not stop.is_set():
                try:
                    ok = client.post(f"{url}/v1/models/{MODEL_NAME}:predict",
                                     json=v1_body(images[i % len(images)])).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok and measuring.is_set():
                    with lock:
                        good[0] += 1
                i += users

    threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(users)]
    for t in threads:
        t.start()
    time.sleep(min(10.0, seconds / 3))  # lead: connections, first batches
    captured_before = captured()
    measuring.set()
    started = time.monotonic()
    time.sleep(seconds)
    with lock:
        n, elapsed = good[0], time.monotonic() - started
    captured_after = captured()
    stop.set()
    for t in threads:
        t.join(timeout=90)
    return n / elapsed, (captured_after - captured_before) / elapsed


class Soak:
    """Predictions at ``rate`` per second on a fixed schedule; feedback on a share of them."""

    def __init__(self, url: str, images: Sequence[bytes], rate: float, seconds: float,
                 feedback_share: float, workers: int = 32) -> None:
        self.url, self.images, self.rate, self.seconds = url, list(images), rate, seconds
        self.feedback_share, self.workers = feedback_share, workers
        self.answers: list[Answer] = []
        self.feedback_codes: list[int] = []
        self.start = 0.0
        self._lock = threading.Lock()
        self._next = 0

    def run(self) -> None:
        n = max(1, int(self.rate * self.seconds))
        self.start = time.monotonic() + 0.5
        threads = [threading.Thread(target=self._worker, args=(n,), daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _take(self, n: int) -> int | None:
        with self._lock:
            i = self._next
            self._next += 1
        return i if i < n else None

    def _worker(self, n: int) -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            while (i := self._take(n)) is not None:
                due = self.start + i / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    r = client.post(f"{self.url}/v1/models/{MODEL_NAME}:predict",
                                    json=v1_body(self.images[i % len(self.images)]))
                    status, served = r.status_code, r.headers.get("x-inference-id")
                except httpx.HTTPError:
                    status, served = -1, None
                answer = Answer(due, 1000 * (time.monotonic() - due), status, served)
                feedback = None
                # every k-th answer, spread evenly (no RNG: the same share in every window)
                if status == 200 and served and self.feedback_share > 0 and \
                        int((i + 1) * self.feedback_share) > int(i * self.feedback_share):
                    try:
                        feedback = client.post(f"{self.url}/v1/feedback",
                                               json={"inference_id": served, "correct": True}).status_code
                    except httpx.HTTPError:
                        feedback = -1
                with self._lock:
                    self.answers.append(answer)
                    if feedback is not None:
                        self.feedback_codes.append(feedback)


def report(before: dict[str, float], after: dict[str, float], stats: list[WindowStats], window_min: float,
           books: Accounting, soak: Soak, peaks: tuple[float, float] | None, load_avg: tuple[str, str],
           out=sys.stdout) -> None:
    if peaks is not None:
        print(f"\npeak: {peaks[0]:.1f} predictions/s served, {peaks[1]:.1f}/s captured whole "
              f"(the loop's peak: {min(peaks):.1f}/s)", file=out)
    print(f"soak: {soak.rate:.1f} predictions/s offered for {soak.seconds / 60:g} min"
          + (" (half of the loop's peak)" if peaks is not None else "")
          + f"; load average at start {load_avg[0]}, at end {load_avg[1]}", file=out)
    print(f"\n{'process':<48} {'RSS start MiB':>13} {'end MiB':>9} {'change':>8}", file=out)
    for key in before:
        end = after.get(key, float("nan"))
        print(f"{key:<48} {before[key]:>13.1f} {end:>9.1f} {end - before[key]:>+8.1f}", file=out)
    print(f"\n{'window':<12} {'requests':>8} {'errors':>6} {'req/s':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}",
          file=out)
    for w in stats:
        span = f"{w.index * window_min:g}-{(w.index + 1) * window_min:g} min"
        print(f"{span:<12} {w.requests:>8} {w.errors:>6} {w.rate:>6.1f} {w.p50_ms:>8.1f} {w.p95_ms:>8.1f} "
              f"{w.max_ms:>8.1f}", file=out)
    codes = Counter(soak.feedback_codes)
    print(f"\nfeedback: {sum(codes.values())} sent, answers {dict(sorted(codes.items()))}", file=out)
    print(f"loop: {books.line()}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="soak length (default: %(default)s)")
    p.add_argument("--window", type=float, default=5.0, help="minutes per latency window (default: %(default)s)")
    p.add_argument("--rate", type=float, help="predictions/s to offer (default: half of the measured peak)")
    p.add_argument("--peak-seconds", type=float, default=30.0, help="peak measurement length (default: %(default)s)")
    p.add_argument("--peak-users", type=int, default=8, help="users without pause for the peak (default: %(default)s)")
    p.add_argument("--feedback-share", type=float, default=0.1,
                   help="share of answers that get feedback (default: %(default)s)")
    p.add_argument("--bundle", help="export bundle (default: newest, or a demo export)")
    p.add_argument("--images", type=Path, help="folder of images (default: demo evaluation split)")
    p.add_argument("--no-prometheus", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.window <= 0 or args.peak_seconds <= 0 or args.peak_users < 1:
        p.error("--minutes, --window and --peak-seconds must be > 0, --peak-users >= 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be > 0")
    if not 0 <= args.feedback_share <= 1:
        p.error("--feedback-share must be within 0..1")

    scratch = Path(tempfile.mkdtemp(prefix="gg-soak-"))
    images = load_images(args.images, 40)
    bundle = resolve_bundle(args.bundle, scratch)
    if not Bundle(bundle).has_detector() and bundle.is_relative_to(scratch):
        from drift_detector.build import build_detector

        build_detector(bundle, home() / "data" / "demo", n_reference=200, window_size=20, ert=1000,
                       n_bootstraps=4000)
    detector = Bundle(bundle).has_detector()
    if not detector:
        print(f"note: {bundle} has no drift detector; running without it", file=sys.stderr)
    ports = Ports.free()
    db = f"sqlite:///{scratch / 'loop.db'}"
    loop = LoopServices(bundle, scratch / "logs", detector_url=f"http://127.0.0.1:{ports.detector}/" if detector else None,
                        db_url=db, objects_url=(scratch / "objects").as_uri())
    stack = LocalStack(bundle, PRODUCTION, ports, log_dir=scratch / "logs", detector=detector,
                       prometheus=not args.no_prometheus, logger_url=loop.broker_url + "/",
                       feedback_url=loop.capture_url,
                       extra_services=[(loop.capture, SIDE), (loop.broker, SIDE)])
    print(f"starting the loop from {bundle} (logs in {scratch / 'logs'}) ...", flush=True)
    with stack:
        peaks = None
        rate = args.rate
        if rate is None:
            print(f"peak: {args.peak_users} users for {args.peak_seconds:g} s ...", flush=True)
            peaks = peak_rates(stack.gateway_url, images, args.peak_users, args.peak_seconds,
                               lambda: len(captured_ids(db)))
            rate = min(peaks) / 2
            drained = time.monotonic()
            if not wait_delivered(stack.gateway_url, loop.broker_url, 600):
                print("error: the peak's backlog was not delivered within 600 s", file=sys.stderr)
                return 1
            print(f"peak backlog delivered in {time.monotonic() - drained:.0f} s", flush=True)
        load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
        before = memory(stack)
        print(f"soak: {rate:.1f}/s for {args.minutes:g} min ...", flush=True)
        soak = Soak(stack.gateway_url, images, rate, args.minutes * 60, args.feedback_share)
        soak.run()
        after = memory(stack)
        load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
        books = account([a.inference_id for a in soak.answers if a.status == 200 and a.inference_id],
                        db, stack.gateway_url, loop.broker_url)
    stats = windows(soak.answers, soak.start, args.window * 60)
    report(before, after, stats, args.window, books, soak, peaks, (load_start, load_end))
    failed_predictions = sum(1 for a in soak.answers if a.status != 200)
    failed_feedback = sum(1 for c in soak.feedback_codes if not 200 <= c < 300)
    if args.json:
        args.json.write_text(json.dumps({
            "rate": rate, "peak": {"served": peaks[0], "captured": peaks[1]} if peaks else None,
            "minutes": args.minutes, "load_average": [load_start, load_end],
            "rss_mib": {"start": before, "end": after}, "windows": [dataclasses.asdict(w) for w in stats],
            "feedback": {"sent": len(soak.feedback_codes), "failed": failed_feedback},
            "loop": {**dataclasses.asdict(books), "lost": list(books.lost)}}, indent=1))
    problems = []
    if not books.ok:
        problems.append(f"not everything served was captured ({books.line()})")
    if failed_predictions:
        problems.append(f"{failed_predictions} prediction(s) failed")
    if failed_feedback:
        problems.append(f"{failed_feedback} feedback post(s) failed")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
