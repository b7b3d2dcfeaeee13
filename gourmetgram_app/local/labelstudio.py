"""A local Label Studio process (its own venv: its pins differ from ours; ``scripts/setup.sh``
makes ``.venv-labelstudio``), started with a data folder, a first user and an API token from the
environment (``LABEL_STUDIO_USERNAME``/``_PASSWORD``/``_API_KEY``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gourmetgram import constants
from gourmetgram.environment import environment
from gourmetgram.errors import BadInput, DependencyUnavailable
from gourmetgram.loop.labelstudio import LabelStudioUnavailable
from gourmetgram.loop.settings import ENV_LS_PASSWORD, ENV_LS_TOKEN, ENV_LS_USERNAME
from gourmetgram_app.local.process import Service, get_ok

ENV_LS_BIN = "GOURMETGRAM_LABEL_STUDIO_BIN"
START_TIMEOUT_S = 300.0  # Django migrations on first start: about 25 s idle, minutes on busy cores


def find_label_studio() -> Path:
    """The ``label-studio`` executable of its own venv (``scripts/setup.sh`` makes ``.venv-labelstudio``)."""
    candidates = [environment().label_studio_bin]
    for root in (constants.REPO_ROOT, Path(sys.prefix).parent):
        candidates.append(str(root / ".venv-labelstudio" / "bin" / "label-studio"))
    candidates.append(shutil.which("label-studio"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise LabelStudioUnavailable("label-studio is not installed: run scripts/setup.sh (it makes "
                                 f".venv-labelstudio) or set {ENV_LS_BIN}")


class LabelStudioServer:
    """One local Label Studio process (sqlite in ``data_dir``)."""

    def __init__(self, data_dir: str | Path, port: int = constants.LABEL_STUDIO_PORT,
                 host: str = constants.HOST, username: str | None = None, password: str | None = None,
                 token: str | None = None, log_path: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port, self.host = port, host
        self.username = username or environment().label_studio_username or ""
        self.password = password or environment().label_studio_password or ""
        self.token = token or environment().label_studio_api_key or ""
        missing = [name for name, v in ((ENV_LS_USERNAME, self.username), (ENV_LS_PASSWORD, self.password),
                                        (ENV_LS_TOKEN, self.token)) if not v]
        if missing:
            raise BadInput(f"set {', '.join(missing)} in the environment (Label Studio's first user and "
                            "its API token; never in git)")
        binary = find_label_studio()
        # no error reports or analytics to the vendor: the data is production photos
        env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
                   SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false")
        env.pop("PYTHONPATH", None)  # its own venv, its own packages
        env.pop("DJANGO_SETTINGS_MODULE", None)
        argv = [str(binary), "start", "--no-browser", "--internal-host", host, "--host", self.url,
                "--port", str(port), "--username", self.username, "--password", self.password,
                "--user-token", self.token, "--enable-legacy-api-token"]
        self.service = Service("label-studio", argv, Path(log_path or self.data_dir / "label-studio.log"),
                               lambda: get_ok(f"{self.url}/health"), env=env)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "LabelStudioServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.service.start(cwd=self.data_dir)
        try:
            self.service.wait_ready(timeout_s)
        except DependencyUnavailable as exc:  # it exited or was not ready in time
            self.service.stop()
            raise LabelStudioUnavailable(str(exc)) from None
        return self

    def stop(self) -> None:
        self.service.stop()

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
