"""MLflow set-up shared by every step: local sqlite by default, a server on the cluster.

``MLFLOW_TRACKING_URI`` (from the environment or a Kubernetes Secret) wins; otherwise
runs go to ``sqlite:///$GOURMETGRAM_HOME/mlflow.db`` with artifacts beside it. A database
URI (``postgresql://...``) in ``MLFLOW_TRACKING_URI`` keeps its artifacts beside the state
folder too; a server (``http://...``) stores them where it is configured to.
"""

from __future__ import annotations

from pathlib import Path

from gourmetgram.constants import DEFAULT_HOME
from gourmetgram.environment import environment
from gourmetgram.errors import DependencyUnavailable

EXPERIMENT = "gourmetgram-food11"


def home() -> Path:
    """The local state folder (runs, models, MLflow store), made absolute once."""
    path = Path(environment().home or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# Set in every pod a KFP backend runs (backend/src/v2/component/constants.go, KFP 2.17).
KFP_POD_ENV = "KFP_POD_NAME"


def tracking_uri() -> str:
    """The MLflow server from ``MLFLOW_TRACKING_URI``; locally a sqlite file by default.

    In a KFP pod there is no local default: a sqlite file there vanishes with the pod, and
    the run, the model and the registry entry with it. Fail with a message instead.
    """
    uri = environment().mlflow_tracking_uri
    if uri:
        return uri
    if environment().kfp_pod_name:
        from gourmetgram.errors import BadInput

        raise BadInput("MLFLOW_TRACKING_URI is not set in this pipeline pod: the Kubernetes Secret "
                        "'mlflow-credentials' (key MLFLOW_TRACKING_URI) is missing from the run's "
                        "namespace; create it with infra/scripts/install_platform.sh")
    return f"sqlite:///{home() / 'mlflow.db'}"


def configure_mlflow(experiment: str = EXPERIMENT):
    """Point MLflow at the store and make sure the experiment exists; returns the module."""
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if not uri.startswith(("http://", "https://")):
                # a database store (the local sqlite file, or a PostgreSQL URL): its artifacts go
                # to the state folder; a tracking server has its own artifact root
                location = (home() / "mlartifacts").as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
    except (MlflowException, OSError) as exc:
        # The first call that touches the store: a server that is down (after MLflow's own
        # retries) or a database that cannot be opened.
        raise DependencyUnavailable(f"MLflow at {uri} is not available ({str(exc)[:300]}); start the tracking "
                                    "server or set MLFLOW_TRACKING_URI to one that answers") from None
    return mlflow
