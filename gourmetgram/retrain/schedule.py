"""The schedule trigger on the cluster: a KFP recurring run of the training pipeline.

``gourmetgram pipeline schedule`` compiles the pipeline and creates the recurring run with the
real ``kfp.Client`` (``create_recurring_run``: a cron trigger, six fields with seconds first,
the backend's robfig/cron format). The run is created once per name in its experiment: a
second ``schedule`` with the same name is refused (two schedules would start two runs each
time) unless ``replace`` deletes the old one first.

What the backend's scheduler does not do: the local guard rails (cool-down, minimum new
labels; ``gourmetgram/retrain/policy.py``). KFP only keeps one run at a time
(``max_concurrency=1``) and skips missed intervals (``no_catchup``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gourmetgram.environment import environment
from gourmetgram.errors import BadInput

# One cron field: numbers, names (MON, JAN), ranges, steps, lists, and robfig/cron's * and ?.
_CRON_ITEM = r"(?:\*|\?|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/[0-9]+)?"
_CRON_FIELD = re.compile(rf"{_CRON_ITEM}(?:,{_CRON_ITEM})*")
# Field ranges for the numeric parts (seconds, minutes, hours, day of month, month, day of week).
_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_CRON_NAMES = ("seconds", "minutes", "hours", "day of month", "month", "day of week")
DEFAULT_NAME = "gourmetgram-retrain-schedule"


def check_cron(expression: str) -> str:
    """A six-field cron expression (seconds first), or :class:`BadInput` saying what is wrong.

    KFP takes ``@every 1h``-style descriptors too; they are refused here because the schedule
    is meant to be read next to ``configs/retrain.yaml``'s ``triggers.cron``.
    """
    fields = expression.split()
    if len(fields) != 6:
        raise BadInput(f"cron {expression!r} has {len(fields)} field(s); KFP takes six, seconds first "
                        "(e.g. '0 0 3 * * 1': Mondays 03:00 UTC)")
    for value, (low, high), name in zip(fields, _CRON_RANGES, _CRON_NAMES):
        if not _CRON_FIELD.fullmatch(value):
            raise BadInput(f"cron {expression!r}: the {name} field {value!r} is not a cron field")
        for number in re.findall(r"(?<![/0-9])[0-9]+", value):  # step sizes (after /) are not bounded
            if not low <= int(number) <= high:
                raise BadInput(f"cron {expression!r}: {number} is out of range for the {name} field "
                                f"({low}-{high})")
    return expression


@dataclasses.dataclass(frozen=True)
class ScheduleResult:
    recurring_run_id: str
    experiment_id: str
    replaced: tuple[str, ...] = ()


def _client(host: str, namespace: str | None):
    import kfp

    kwargs = {"namespace": namespace} if namespace else {}
    return kfp.Client(host=host, existing_token=environment().kfp_token, **kwargs)


def _existing(client, experiment_id: str, name: str, namespace: str | None) -> list[str]:
    """Ids of the recurring runs called ``name`` in the experiment (every page)."""
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id,
                                          namespace=namespace)
        found += [r.recurring_run_id for r in (page.recurring_runs or []) if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def create_schedule(host: str, package: str | Path, cron: str, params: dict, name: str = DEFAULT_NAME,
                    experiment: str = "gourmetgram-retrain", namespace: str | None = None,
                    replace: bool = False, description: str = "") -> ScheduleResult:
    """Create (or with ``replace``, re-create) the recurring run; returns its id."""
    check_cron(cron)
    client = _client(host, namespace)
    exp = client.create_experiment(experiment, namespace=namespace)  # gets it when it exists
    old = _existing(client, exp.experiment_id, name, namespace)
    if old and not replace:
        raise BadInput(f"a recurring run named {name!r} already exists in experiment {experiment!r} "
                        f"(id {', '.join(old)}); pass --replace to replace it, or choose another --name")
    for recurring_run_id in old:
        client.delete_recurring_run(recurring_run_id)
    run = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description=description or None,
        cron_expression=cron, max_concurrency=1, no_catchup=True, params=params,
        pipeline_package_path=str(package), enabled=True)
    return ScheduleResult(str(run.recurring_run_id), str(exp.experiment_id), tuple(old))
