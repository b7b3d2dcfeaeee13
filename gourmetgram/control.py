"""Who may drive the local gateway's control API, and with what.

The control API (``/_gourmetgram/rollout``) starts processes from a bundle and moves
traffic, so it takes requests only:

* with the **stack's control token** (``Authorization: Bearer <token>``, compared in
  constant time): a random token written at stack start, mode 0600, to the stack's state
  folder ``$GOURMETGRAM_HOME/stacks/<host>-<gateway port>/control-token``; the CLI
  (``gourmetgram rollout``) finds it there from ``--gateway`` (or takes
  ``$GOURMETGRAM_CONTROL_TOKEN``). A browser cannot add that header to a cross-site
  request without a CORS preflight, which the gateway never grants;
* as **JSON** (``Content-Type: application/json``, else 415), so no "simple" form or
  ``text/plain`` request gets through;
* naming a **bundle inside the model store** (``$GOURMETGRAM_HOME/models``, else 400), so
  no one can make the gateway start a Triton on an arbitrary folder.

The same token unlocks tag routing (``X-Gourmetgram-Tag`` or a ``latest-``/``prev-``
Host): on the cluster KServe's tag routes are internal, so locally they are too.

The local drift detector's ingest endpoint takes events only with ITS token (also a
Bearer token): ``$GOURMETGRAM_DETECTOR_TOKEN``, else ``$GOURMETGRAM_HOME/secrets/
detector-token`` (0600, created by whichever of the detector and the gateway starts
first). On the cluster KServe's logger agent sends no such header; there a NetworkPolicy
(the chart's ``detector.networkPolicy``) limits who reaches the detector.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from gourmetgram.environment import environment
from gourmetgram.errors import BadInput
from gourmetgram.tracking import home

TOKEN_ENV = "GOURMETGRAM_CONTROL_TOKEN"
DETECTOR_TOKEN_ENV = "GOURMETGRAM_DETECTOR_TOKEN"
TOKEN_FILE = "control-token"
ROLLOUT_STATE_FILE = "rollout.json"  # the gateway's saved rollout, next to the token
JSON_TYPE = "application/json"
MAX_CONTROL_BODY_BYTES = 64 * 1024  # a control action is a few fields


def model_store() -> Path:
    """Where exported bundles live (``$GOURMETGRAM_HOME/models``), resolved."""
    return (home() / "models").resolve()


def stack_state_dir(host: str, port: int) -> Path:
    """The state folder of the stack whose gateway listens on ``host:port``."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return home() / "stacks" / f"{safe}-{port}"


def token_path(host: str, port: int) -> Path:
    return stack_state_dir(host, port) / TOKEN_FILE


def write_token(path: Path) -> str:
    """A fresh random token at ``path``: folder 0700, file 0600 (also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return token


def read_token(path: Path) -> str:
    """The token in ``path``; refuses a file that others may read (like ssh does)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise BadInput(f"cannot read the control token {path} ({exc.strerror}); start the stack "
                        f"with `gourmetgram serve` under the same GOURMETGRAM_HOME, or set "
                        f"{TOKEN_ENV}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(f"control token {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"run `chmod 600 {path}`")
    if not text:
        raise BadInput(f"control token {path} is empty; restart the stack")
    return text


def token_for_gateway(gateway_url: str) -> str:
    """What the CLI sends: ``$GOURMETGRAM_CONTROL_TOKEN``, else the stack's token file."""
    env = (environment().control_token or "").strip()
    if env:
        return env
    parts = urlsplit(gateway_url)
    if not parts.hostname or not parts.port:
        raise BadInput(f"--gateway {gateway_url!r} is not http://HOST:PORT")
    return read_token(token_path(parts.hostname, parts.port))


def gateway_token(token_file: str | Path | None, host: str, port: int) -> str:
    """The gateway's token: from ``token_file`` (what the stack wrote), else the state
    folder's file for ``host:port``, written now when the gateway runs on its own."""
    path = Path(token_file) if token_file else token_path(host, port)
    return read_token(path) if path.exists() else write_token(path)


def detector_token_path() -> Path:
    return home() / "secrets" / "detector-token"


def detector_token() -> tuple[str, Path | None]:
    """The local detector's ingest token and its file: ``$GOURMETGRAM_DETECTOR_TOKEN``
    (no file), else the home's token file, created (0600) when missing."""
    env = (environment().detector_token or "").strip()
    if env:
        return env, None
    path = detector_token_path()
    return (read_token(path) if path.exists() else write_token(path)), path


def sink_token_for(url: str) -> str | None:
    """The token the inference logger sends to its sink: the detector's, for a sink on this
    machine (loopback); none for any other (a cluster sink never sees a local secret)."""
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        return detector_token()[0]
    except (BadInput, OSError):
        return None  # a side path: the sink then refuses events, which the logger counts


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def presented_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorized(headers: Mapping[str, str], token: str) -> bool:
    """True when the request carries ``token`` (constant-time comparison)."""
    given = presented_token(headers)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_json(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == JSON_TYPE


def refuse(headers: Mapping[str, str], token: str) -> JSONResponse | None:
    """401 without the token, 415 for anything but JSON; None when the request may proceed.
    The token is checked first, so an anonymous caller learns nothing else."""
    if not authorized(headers, token):
        return JSONResponse(
            {"error": "the control API needs the stack's control token as 'Authorization: Bearer "
                      "<token>' (`gourmetgram rollout` sends it; the stack keeps it in "
                      "$GOURMETGRAM_HOME/stacks/<host>-<port>/control-token)"},
            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if not is_json(headers):
        return JSONResponse({"error": f"the control API takes Content-Type: {JSON_TYPE}, not "
                                      f"{headers.get('content-type') or 'none'!r}"}, status_code=415)
    return None


def bundle_in_store(bundle: Any, store: Path | None = None) -> Path:
    """``bundle`` as a folder inside the model store (symlinks resolved), else BadInput (400)."""
    store = (store or model_store()).resolve()
    text = str(bundle)
    if "://" in text and not text.startswith("file://"):
        raise BadInput(f"bundle {text} is not a folder in the model store {store}; the local "
                        "gateway serves only exported bundles under it")
    try:
        path = Path(text.removeprefix("file://")).expanduser().resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # a NUL byte, an unknown ~user, a loop
        raise BadInput(f"bundle {text!r} is not a usable folder path ({exc}); name a bundle "
                        f"folder inside the model store {store}") from exc
    if path == store or not path.is_relative_to(store):
        raise BadInput(f"bundle {text} is outside the model store {store}; the local gateway "
                        "starts revisions only from bundles exported there (`gourmetgram pipeline "
                        "run` and `gourmetgram demo` put them there)")
    if not path.is_dir():
        raise BadInput(f"bundle {text} is not a folder in the model store {store}")
    return path
