"""Label Studio: the labelling tool, its own process (its own venv locally: its pins differ
from ours; :mod:`gourmetgram_app.local.labelstudio` starts it), reached through ``label-studio-sdk``.

* :class:`LabelQueue` makes the project (a ``Choices`` control over the class names), pushes
  queued samples as tasks with the model's prediction as a pre-annotation, and pulls the
  annotations back as labels (``label_source`` annotator, who and when).

Images reach tasks as ``data:`` URIs for a local object store (nothing else to configure),
or as presigned URLs for S3/MinIO (Label Studio fetches them itself).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Sequence
from xml.sax.saxutils import quoteattr

from gourmetgram import constants
from gourmetgram.environment import environment
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.loop.labels import record_annotation
from gourmetgram.loop.models import LabelTask, Sample
from gourmetgram.loop.settings import ENV_LS_TOKEN
from gourmetgram.loop.store import Store, utcnow
from gourmetgram.objectstore import ObjectStore

FROM_NAME, TO_NAME = "label", "image"


class LabelStudioUnavailable(DependencyUnavailable):
    """Label Studio is not installed, not running or refuses the token (exit 3 on the CLI)."""


def label_config(class_names: Sequence[str]) -> str:
    choices = "".join(f"<Choice value={quoteattr(n)}/>" for n in class_names)
    return (f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>'
            f'<Header value="Which class is this photo? (the model\'s guess is pre-selected)"/>'
            f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">{choices}</Choices>'
            f'</View>')


def ls_url(explicit: str | None = None) -> str:
    return explicit or environment().label_studio_url or f"http://{constants.HOST}:{constants.LABEL_STUDIO_PORT}"


def client(url: str | None = None, token: str | None = None):
    from label_studio_sdk import LabelStudio

    url = ls_url(url)
    token = token or environment().label_studio_api_key
    if not token:
        raise BadInput(f"set {ENV_LS_TOKEN} (Label Studio's API token) in the environment")
    return LabelStudio(base_url=url, api_key=token, timeout=60)


def _call(what: str, fn, *args, **kwargs):
    """An SDK call whose connection/auth failure becomes a :class:`LabelStudioUnavailable`."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return fn(*args, **kwargs)
    except httpx.HTTPError as exc:
        raise LabelStudioUnavailable(f"Label Studio is not reachable ({what}): {exc}") from None
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise LabelStudioUnavailable(f"Label Studio refused the API token ({what}): {exc.body}") from None
        raise


class LabelQueue:
    """The labelling project for one set of classes, and the sync between it and the store."""

    def __init__(self, store: Store, objects: ObjectStore, class_names: Sequence[str], ls=None,
                 title: str = "GourmetGram production samples") -> None:
        self.store, self.objects = store, objects
        self.class_names = list(class_names)
        self.ls = ls or client()
        self.title = title
        self._project_id: int | None = None

    @property
    def project_id(self) -> int:
        if self._project_id is None:
            self._project_id = self.ensure_project()
        return self._project_id

    def ensure_project(self) -> int:
        config = label_config(self.class_names)
        for p in _call("list projects", self.ls.projects.list):
            if p.title == self.title:
                if (p.label_config or "").replace(" ", "") != config.replace(" ", ""):
                    _call("update the label config", self.ls.projects.update, id=p.id, label_config=config)
                return p.id
        p = _call("create the project", self.ls.projects.create, title=self.title, label_config=config,
                  description="Production photos selected by the GourmetGram labelling policy "
                              "(low confidence, marked wrong or flagged by users, random share).")
        return p.id

    def _image_ref(self, sample: Sample) -> str:
        assert sample.object_key is not None, "only complete samples are queued"
        if self.objects.protocol == "file":
            data = self.objects.get(sample.object_key)
            return f"data:{sample.content_type or 'image/jpeg'};base64,{base64.b64encode(data).decode()}"
        return self.objects.presigned_url(sample.object_key)

    def task(self, sample: Sample, reason: str) -> dict:
        prediction = []
        if sample.label in self.class_names:
            prediction = [{"model_version": f"{sample.model_name}:{sample.model_version or '?'}",
                           "score": float(sample.confidence or 0.0),
                           "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                       "value": {"choices": [sample.label]}}]}]
        return {"data": {"image": self._image_ref(sample), "sample_id": sample.sample_id, "reason": reason,
                         "predicted": sample.label, "confidence": sample.confidence,
                         "model_version": sample.model_version, "stage": sample.stage},
                "predictions": prediction}

    def _tasks(self, what: str, **params):
        """The project's tasks, paged by the SDK. Without ``fields="all"`` Label Studio leaves out
        the annotations, predictions and their per-task subqueries: several times cheaper on a
        project of thousands of tasks, which the demo's annotators list every few seconds."""
        return _call(what, lambda: list(self.ls.tasks.list(project=self.project_id, **params)))

    def existing_tasks(self) -> dict[str, int]:
        """``{sample_id: task id}`` already in the project (so a re-run never imports twice)."""
        out = {}
        for t in self._tasks("list tasks"):
            sid = (t.data or {}).get("sample_id")
            if sid:
                out[sid] = t.id
        return out

    def open_tasks(self, after_id: int = 0) -> list:
        """Tasks nobody has annotated yet, newer than task ``after_id`` (Data Manager filters)."""
        items = [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]
        if after_id:
            items.append({"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after_id})
        query = json.dumps({"filters": {"conjunction": "and", "items": items}})
        return self._tasks("list open tasks", query=query)

    def push(self, batch: int = 100) -> int:
        """Push every queued sample that has no task yet; returns how many were imported."""
        with self.store.session() as s:
            pending = s.execute(select_pending()).all()
        if not pending:
            return 0
        existing = self.existing_tasks()
        to_import = [(sample, task) for sample, task in pending if sample.sample_id not in existing]
        for i in range(0, len(to_import), batch):
            chunk = to_import[i:i + batch]
            imported = _call("import tasks", self.ls.projects.import_tasks, id=self.project_id,
                             request=[self.task(sample, task.reason) for sample, task in chunk], return_task_ids=True)
            ids = list(getattr(imported, "task_ids", None) or [])
            if len(ids) == len(chunk):  # Label Studio creates them in the order sent
                existing.update((sample.sample_id, task_id) for (sample, _), task_id in zip(chunk, ids))
            else:  # an older server: read them back
                existing = self.existing_tasks()
        now = utcnow()
        with self.store.write() as s:
            for sample, _task in pending:
                row = s.get(LabelTask, sample.sample_id)
                if row is not None and sample.sample_id in existing:
                    row.ls_project_id, row.ls_task_id, row.pushed_at = self.project_id, existing[sample.sample_id], now
        return len(to_import)

    def pull(self) -> dict[str, int]:
        """Annotations -> labels (``label_source`` annotator, who, when); the newest per task wins.
        A user's correction waiting for review is confirmed or rejected by the annotation."""
        created = updated = skipped = 0
        rows = []
        for t in self._tasks("list annotated tasks", fields="all", only_annotated=True):
            sid = (t.data or {}).get("sample_id")
            annotations = [a if isinstance(a, dict) else a.dict() for a in (t.annotations or [])]
            annotations = [a for a in annotations if not a.get("was_cancelled")]
            if not sid or not annotations:
                continue
            latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at")))
            label = _choice(latest.get("result") or [])
            if label not in self.class_names:
                skipped += 1
                continue
            who = (latest.get("created_username") or "").strip() or f"label-studio user {latest.get('completed_by')}"
            when = _parse_time(latest.get("updated_at") or latest.get("created_at"))
            rows.append((sid, label, who, when, str(latest.get("id"))))
        with self.store.write() as s:
            for sid, label, who, when, ann_id in rows:
                # also settles a user's correction waiting for this annotator (labels.py)
                outcome = record_annotation(s, sid, label, who, when, ann_id)
                created += outcome == "created"
                updated += outcome == "updated"
                skipped += outcome == "unknown"
        return {"created": created, "updated": updated, "skipped": skipped}


def select_pending():
    from sqlalchemy import select

    return (select(Sample, LabelTask).join(LabelTask, LabelTask.sample_id == Sample.sample_id)
            .where(LabelTask.ls_task_id.is_(None)).order_by(LabelTask.queued_at, Sample.sample_id))


def _choice(result: list) -> str | None:
    for r in result:
        if isinstance(r, dict) and r.get("from_name") == FROM_NAME:
            choices = (r.get("value") or {}).get("choices") or []
            if choices:
                return choices[0]
    return None


def _parse_time(value) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return utcnow()
