"""Does one turn of the loop make the model better, on any machine? Continual training vs a retrain from scratch.

Per seed, with no server (every piece is the code the cycle runs, called in process):

1. **v1**: the demo model trained from scratch with the demo config (that seed, ``--threads``);
2. **production data, the way the cycle builds it**: the cycle's simulated users
   (``gourmetgram_app/local/simulate.py``: its photo choice, its "night shot" drift, its users'
   dice, seeded with the seed) upload ``UserSettings().before`` photos, half of them night shots; v1
   answers them (locally instead of through the gateway); the users' feedback and corrections are
   written to a real loop store (SQLite + a local object store) with ``record_feedback``; with
   ``--annotators`` (what the demo's stage 8 does) the labelling policy's queue
   (``configs/loop.yaml``, a budget of ``ANNOTATOR_BUDGET`` a day) is labelled with the photos'
   true classes, as the simulated annotators do through Label Studio (``record_annotation``, what
   its sync calls); and
   ``loop export`` (``export_dataset`` with the base dataset and ``configs/loop.yaml``) writes the
   labelled production data with its lineage, reserving the production evaluation set;
3. the training pipeline's ingest merges it into the base dataset (``ingest_step``);
4. **v2**: v1 fine-tuned on the merged data (``train.init_from: production``, the config's
   ``train.fine_tune``); with ``--scratch``, also a v2 trained from scratch on the same data;
5. the **differential gate** (``gourmetgram/evaluation/differential.py``, the config's
   ``evaluation.differential``) on v2 vs v1: accuracy on the original and on the production
   evaluation sets, the paired differences with their interval and exact McNemar p-value, and
   the verdict; plus both models on night shots of every original evaluation image (a larger,
   unselected view of the drifted sub-population than the labelled production set).

The table ends with the training times (v1 from scratch, v2 fine-tuned, v2 from scratch).

    nice -n 10 .venv/bin/python benchmarks/continual_training.py --seeds 0,1,2,3,4 --threads 2 --scratch
    nice -n 10 .venv/bin/python benchmarks/continual_training.py --sweep --seeds 0,1,2   # epochs x lr
    ... --sweep --sweep-epochs 5 --sweep-lr 1e-4,2e-4 --sweep-share 0,0.3     # x the production share
    .venv/bin/python benchmarks/continual_training.py --quick                            # a smoke run

``--work DIR`` keeps each seed's v1 and production data there, so a second run (the sweep, then
the five-seed table) reuses them. About (v1 + 1.3 x v1 per v2 from scratch + a fine-tune) per seed:
4-6 minutes a seed on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gourmetgram.config import RunConfig, load_config, override  # noqa: E402

QUICK_EPOCHS = 1  # --quick: every training run, on a quarter of the uploads
ANNOTATOR_BUDGET = 2000  # --annotators: labels a day (the demo's DEMO_LABELLING_BUDGET: all it queues)


@dataclasses.dataclass
class Production:
    """One seed's production data (step 2) and the merged dataset (step 3)."""

    merged: Path
    uploads: int
    night_shots: int
    v1_right_on_night_shots: int
    labels: dict[str, int]
    per_split: dict[str, int]
    reserved: int
    note: str


def build_base(work: Path) -> Path:
    from gourmetgram.data.demo import build_demo_dataset

    base = work / "demo"
    if not (base / "classes.txt").is_file():
        build_demo_dataset(base)
    return base


def train_model(dataset: Path, cfg: RunConfig, out: Path, parent_checkpoint: Path | None = None) -> tuple[Path, float]:
    """(checkpoint, seconds): from scratch, or fine-tuned from ``parent_checkpoint``."""
    from gourmetgram.continual import parent_from_checkpoint
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.training import train

    report = validate_dataset(dataset, check_images=False, progress=False)
    parent = parent_from_checkpoint(parent_checkpoint) if parent_checkpoint else None
    result = train(dataset, report, cfg, out, log_to_mlflow=False, progress=False, parent=parent)
    return Path(result.checkpoint), result.seconds


def cached_v1(base: Path, cfg: RunConfig, seed: int, threads: int, work: Path) -> tuple[Path, float]:
    """v1 for this seed and thread count, trained once per ``work`` folder."""
    out = work / f"v1-seed{seed}-t{threads}-e{cfg.train.epochs}.pt"
    meta = out.with_suffix(".json")
    if out.is_file() and meta.is_file():
        return out, float(json.loads(meta.read_text())["seconds"])
    checkpoint, seconds = train_model(base, cfg, out)
    meta.write_text(json.dumps({"seconds": seconds}))
    return checkpoint, seconds


def _predict_bytes(model, blobs: list[bytes], batch_size: int = 64) -> list[tuple[int, float]]:
    """(class index, confidence) per image, on the serving preprocessing."""
    import numpy as np
    import torch

    from gourmetgram.model import predict_logits
    from gourmetgram.preprocessing import preprocess_bytes

    out: list[tuple[int, float]] = []
    for start in range(0, len(blobs), batch_size):
        x = np.stack([preprocess_bytes(b, model.spec.image_size) for b in blobs[start:start + batch_size]])
        probs = torch.softmax(predict_logits(model, x), 1)
        conf, idx = probs.max(1)
        out += list(zip(idx.tolist(), conf.tolist()))
    return out


def production_data(base: Path, v1_checkpoint: Path, seed: int, uploads: int, work: Path,
                    annotators: bool = False) -> Production:
    """Steps 2 and 3: the cycle's users upload to v1, answer, correct (and annotators label the
    policy's queue); the loop export; the merge."""
    from components.steps import ingest_step
    from gourmetgram.classes import read_class_names
    from gourmetgram.constants import MODEL_NAME, PRODUCTION
    from gourmetgram.loop.export import export_dataset
    from gourmetgram.loop.feedback import record_feedback
    from gourmetgram.loop.settings import load_loop_settings
    from gourmetgram.loop.store import Store
    from gourmetgram.model import load_checkpoint
    from gourmetgram.objectstore import ObjectStore
    from gourmetgram_app.local.cycle import UserSettings
    from gourmetgram_app.local.simulate import DRIFTED, Population, Served, SimulatedUsers

    folder = work / f"production-seed{seed}-n{uploads}{'-annotated' if annotators else ''}-{v1_checkpoint.stem}"
    summary = folder / "production.json"
    if summary.is_file():
        return Production(**{**json.loads(summary.read_text()), "merged": folder / "merged"})
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = list(read_class_names(base, len(list((base / "training").glob("class_*")))))
    settings = UserSettings(seed=seed)
    population = Population.from_split(base / "training", names, settings.photos)
    users = SimulatedUsers("http://offline.invalid", population, settings.behaviour, seed=settings.seed)
    drawn = [users.draw() for _ in range(uploads)]  # the same RNG sequence as uploads through a gateway
    answers = _predict_bytes(load_checkpoint(v1_checkpoint), [photo.image for photo, _ in drawn])
    store = Store(f"sqlite:///{folder / 'loop.db'}")
    objects = ObjectStore((folder / "objects").as_uri())
    for i, ((photo, dice), (index, confidence)) in enumerate(zip(drawn, answers)):
        sample_id = f"seed{seed}-upload{i:04d}"
        key, sha = objects.put_image(photo.image)
        store.upsert_sample(sample_id, inference_id=sample_id, object_key=key, content_sha256=sha,
                            content_type="image/jpeg", label=names[index], class_index=index,
                            confidence=confidence, model_name=MODEL_NAME, model_version="1", stage=PRODUCTION)
        served = Served(photo.group, photo.label, 200, inference_id=sample_id, predicted=names[index],
                        confidence=confidence)
        body = users.feedback_for(served, dice)
        if body is not None:
            record_feedback(store, {"correct_class": None, "flag": None, **body})
        users.report.served.append(served)
    if annotators:
        label_queue(store, {f"seed{seed}-upload{i:04d}": photo.label for i, (photo, _) in enumerate(drawn)})
    report = export_dataset(store, objects, folder / "export", names, load_loop_settings().export, base=base)
    store.dispose()
    ingest_step(str(base), folder / "merged", production_dataset_uri=str(folder / "export"))
    night = [s for s in users.report.served if s.group == DRIFTED]
    production = Production(folder / "merged", uploads, len(night), sum(s.right for s in night), dict(report.labels),
                            dict(report.per_split), report.reserved, report.evaluation_note)
    summary.write_text(json.dumps({k: v for k, v in dataclasses.asdict(production).items() if k != "merged"}))
    return production


def label_queue(store, truth: dict[str, str]) -> int:
    """The simulated annotators without the transport: the labelling policy queues samples, each
    gets its true class as an annotator's label. Returns how many."""
    from gourmetgram.loop.labels import record_annotation
    from gourmetgram.loop.policy import queue_samples
    from gourmetgram.loop.settings import load_loop_settings

    policy = dataclasses.replace(load_loop_settings().policy, daily_budget=ANNOTATOR_BUDGET)
    queued = queue_samples(store, policy)
    with store.write() as s:
        for n, (sample_id, _reason) in enumerate(queued):
            record_annotation(s, sample_id, truth[sample_id], "simulated annotator", external_id=f"bench-{n}")
    return len(queued)


def night_shot_accuracy(checkpoint: Path, base: Path) -> float:
    """Accuracy on night shots (the cycle's drift transform) of every original evaluation image."""
    from gourmetgram.data.layout import list_images
    from gourmetgram.model import load_checkpoint
    from gourmetgram_app.local.simulate import night_shot

    items = list_images(base / "evaluation")
    answers = _predict_bytes(load_checkpoint(checkpoint), [night_shot(path.read_bytes()) for path, _ in items])
    return sum(index == label for (index, _), (_, label) in zip(answers, items)) / len(items)


def gate(merged: Path, candidate: Path, production: Path, cfg: RunConfig):
    """The differential gate on the merged dataset's evaluation sets (both models in PyTorch: the
    served ONNX graph is parity-checked against it)."""
    from gourmetgram.evaluation import differential as D
    from gourmetgram.evaluation.suite import predict_files
    from gourmetgram.model import load_checkpoint

    def predictor(checkpoint: Path):
        model = load_checkpoint(checkpoint)
        return lambda files: predict_files(model, list(files), model.spec.image_size, cfg.evaluation.batch_size)

    return D.compare(D.evaluation_sets(merged), predictor(candidate), predictor(production), "v1",
                     cfg.evaluation.differential)


@dataclasses.dataclass
class Row:
    seed: int
    kind: str  # fine-tune | scratch
    settings: str
    comparison: dict
    night_v1: float
    night_v2: float
    seconds_v1: float
    seconds_v2: float

    def figures(self, name: str) -> dict:
        return next(s for s in self.comparison["sets"] if s["name"] == name)


def _retrain(seed: int, kind: str, cfg: RunConfig, base: Path, prod: Production, v1: Path, v1_seconds: float,
             work: Path) -> Row:
    """One v2 and its figures; kept in ``work`` (a rerun with the same settings reads them back)."""
    t = cfg.train
    ft = t.fine_tune
    settings = (f"e{ft.epochs}-lr{ft.lr:g}-share{ft.production_share:g}" if kind == "fine-tune"
                else f"e{t.epochs}-lr{t.lr:g}")
    out = work / "runs" / f"{kind}-{settings}-{prod.merged.parent.name}.pt"
    saved = out.with_suffix(".json")
    if saved.is_file():  # the figures are kept; the verdict is judged again with this config
        row = Row(**json.loads(saved.read_text()))
        row.comparison = rejudge(row.comparison, cfg)
        return row
    row = _train_and_judge(seed, kind, cfg, base, prod, v1, v1_seconds, out)
    saved.write_text(json.dumps(dataclasses.asdict(row)))
    return row


def rejudge(comparison: dict, cfg: RunConfig) -> dict:
    """The gate's verdict again from a comparison's paired counts (a pure function of them)."""
    from gourmetgram.evaluation import differential as D
    from gourmetgram.evaluation.paired import PairedCounts

    counts: dict[str, PairedCounts | None] = {}
    for s in comparison["sets"]:
        if not s["n_images"]:
            counts[s["name"]] = None
            continue
        n, gains, losses = s["n_images"], s["gains"], s["losses"]
        both = round(s["production"] * n) - losses
        counts[s["name"]] = PairedCounts(both, gains, losses, n - both - gains - losses)
    return D.judge_sets(counts, comparison["production_version"], cfg.evaluation.differential).to_dict()


def _train_and_judge(seed: int, kind: str, cfg: RunConfig, base: Path, prod: Production, v1: Path,
                     v1_seconds: float, out: Path) -> Row:
    if kind == "fine-tune":
        v2, seconds = train_model(prod.merged, cfg, out, parent_checkpoint=v1)
        ft = cfg.train.fine_tune
        settings = f"{ft.epochs} ep, lr {ft.lr:g}, share {ft.production_share:g}"
    else:
        v2, seconds = train_model(prod.merged, cfg, out)
        settings = f"{cfg.train.epochs} ep, lr {cfg.train.lr:g}"
    comparison = gate(prod.merged, v2, v1, cfg).to_dict()
    return Row(seed, kind, settings, comparison, night_shot_accuracy(v1, base), night_shot_accuracy(v2, base),
               v1_seconds, seconds)


def _f(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _paired(s: dict) -> str:
    if s["interval"] is None:
        return "-"
    return f"{s['delta']:+.3f} [{s['interval'][0]:+.3f},{s['interval'][1]:+.3f}] p={s['p_value']:.2g}"


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'seed':>4} {'retrain':<9} {'settings':<27} | {'orig':>4} {'v1':>5} {'v2':>5} {'v2-v1 [interval] p':<30}"
             f"| {'prod':>4} {'v1':>5} {'v2':>5} {'v2-v1 [interval] p':<30}| {'night v1':>8} {'v2':>5} | "
             f"{'verdict':<8} | {'t v1':>5} {'t v2':>5}"]
    for r in rows:
        o, p = r.figures("original"), r.figures("production")
        lines.append(f"{r.seed:>4} {r.kind:<9} {r.settings:<27} | {o['n_images']:>4} {_f(o['production']):>5} "
                     f"{_f(o['candidate']):>5} {_paired(o):<30}| {p['n_images']:>4} {_f(p['production']):>5} "
                     f"{_f(p['candidate']):>5} {_paired(p):<30}| {r.night_v1:>8.3f} {r.night_v2:>5.3f} | "
                     f"{'PASSED' if r.comparison['passed'] else 'REJECTED':<8} | {r.seconds_v1:>5.0f} {r.seconds_v2:>5.0f}")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per retrain kind and settings: how often the goal held, with the spread."""
    lines = []
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.kind, r.settings), []).append(r)
    for (kind, settings), rs in groups.items():
        def spread(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"

        orig_ok = sum(r.figures("original")["passed"] for r in rs)
        better = sum(r.figures("production")["test"] == "improvement" and r.figures("production")["passed"]
                     for r in rs)
        lines.append(f"{kind} ({settings}) over {len(rs)} seed(s): gate passed {sum(r.comparison['passed'] for r in rs)}"
                     f"/{len(rs)}; non-inferior on original {orig_ok}/{len(rs)}; significantly better on production "
                     f"{better}/{len(rs)}")
        lines.append(f"  v2 - v1 original {spread([r.figures('original')['delta'] for r in rs])}; production "
                     f"{spread([r.figures('production')['delta'] for r in rs])}; night shots "
                     f"{spread([r.night_v2 - r.night_v1 for r in rs])}")
        lines.append(f"  training time: v1 from scratch {statistics.mean(r.seconds_v1 for r in rs):.0f} s, this v2 "
                     f"{statistics.mean(r.seconds_v2 for r in rs):.0f} s")
    return "\n".join(lines)


def sweep_configs(cfg: RunConfig, epochs: list[int], lrs: list[float], shares: list[float]) -> list[RunConfig]:
    return [override(cfg, "train", fine_tune={"epochs": e, "lr": lr, "production_share": share})
            for e in epochs for lr in lrs for share in shares]


def _list_of(kind: type, minimum: float):
    def parse(text: str) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value, each >= {minimum}")
        return values
    return parse


def _positive(text: str) -> int:
    value = _list_of(int, 1)(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one number")
    return value[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=_list_of(int, 0), default=[0, 1, 2, 3, 4],
                   help="comma-separated training and user seeds (default 0,1,2,3,4)")
    p.add_argument("--threads", type=_positive, default=2, help="torch threads (default %(default)s)")
    p.add_argument("--config", default="demo", help="run config (default %(default)s)")
    p.add_argument("--scratch", action="store_true", help="also retrain from scratch on the same data, side by side")
    p.add_argument("--sweep", action="store_true", help="fine-tune with every --sweep-epochs x --sweep-lr")
    p.add_argument("--sweep-epochs", type=_list_of(int, 0), default=[3, 5, 8], help="(default 3,5,8)")
    p.add_argument("--sweep-lr", type=_list_of(float, 1e-12), default=[1e-4, 3e-4, 1e-3], help="(default 1e-4,3e-4,1e-3)")
    p.add_argument("--sweep-share", type=_list_of(float, 0), help="production photos' share of each epoch's draws "
                   "(train.fine_tune.production_share; default: the config's)")
    p.add_argument("--annotators", action="store_true",
                   help="annotators label the labelling policy's queue, as in the demo's stage 8")
    p.add_argument("--uploads", type=_positive, help="simulated uploads per seed (default: the cycle's, UserSettings().before)")
    p.add_argument("--work", help="keep v1s and production data here (reused by later runs); default a temp folder")
    p.add_argument("--json", help="write every row here")
    p.add_argument("--quick", action="store_true", help=f"a smoke run: one seed, {QUICK_EPOCHS} epochs, few uploads")
    args = p.parse_args(argv)

    import torch

    from gourmetgram.errors import GourmetGramError
    from gourmetgram_app.local.cycle import UserSettings

    torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config)
    except GourmetGramError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    seeds, epochs, lrs = args.seeds, args.sweep_epochs, args.sweep_lr
    uploads = args.uploads or UserSettings().before
    if args.quick:
        seeds, uploads = seeds[:1], 60
        cfg = override(cfg, "train", epochs=QUICK_EPOCHS, fine_tune={**dataclasses.asdict(cfg.train.fine_tune),
                                                                     "epochs": QUICK_EPOCHS})
    work = (Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="continual-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = build_base(work)
    shares = args.sweep_share or [cfg.train.fine_tune.production_share]
    configs = sweep_configs(cfg, epochs, lrs, shares) if args.sweep else [cfg]
    rows: list[Row] = []
    started = time.perf_counter()
    print(f"continual training benchmark: config {cfg.source}, seeds {seeds}, {args.threads} thread(s), "
          f"{uploads} uploads a seed (half night shots), work folder {work}", flush=True)
    for seed in seeds:
        seeded = override(cfg, "train", seed=seed)
        v1, v1_seconds = cached_v1(base, seeded, seed, args.threads, work)
        prod = production_data(base, v1, seed, uploads, work, args.annotators)
        print(f"seed {seed}: v1 trained from scratch in {v1_seconds:.0f} s; {prod.uploads} uploads, "
              f"{prod.night_shots} night shots (v1 right on {prod.v1_right_on_night_shots}); labels {prod.labels}; "
              f"production images by split {prod.per_split} ({prod.reserved} reserved for evaluation)"
              + (f"\n  WARNING: {prod.note}" if prod.note else ""), flush=True)
        for c in configs:
            rows.append(_retrain(seed, "fine-tune", override(c, "train", seed=seed), base, prod, v1, v1_seconds, work))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        if args.scratch:
            rows.append(_retrain(seed, "scratch", seeded, base, prod, v1, v1_seconds, work))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nall rows ({time.perf_counter() - started:.0f} s; interval: paired bootstrap "
          f"{2 * cfg.evaluation.differential.confidence - 1:.0%}, p: exact McNemar two-sided; "
          f"night: night shots of the {rows[0].figures('original')['n_images']} original evaluation images)")
    print(format_rows(rows))
    print("\n" + summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
