"""``gourmetgram predict``: classify image files through a running stack (or the cluster)."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

from gourmetgram import constants
from gourmetgram.errors import BadInput, DependencyUnavailable

DEFAULT_URL = f"http://{constants.HOST}:{constants.GATEWAY_PORT}"


def read_images(paths: list[str]) -> list[tuple[str, bytes]]:
    """Every file's bytes, or a BadInput naming each one that cannot be read."""
    images, problems = [], []
    for p in paths:
        path = Path(p)
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            problems.append(f"{p}: is a directory")
            continue
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror or exc}")
            continue
        if not data:
            problems.append(f"{p}: file is empty")
            continue
        images.append((p, data))
    if problems:
        raise BadInput("cannot read image(s):\n  " + "\n  ".join(problems))
    return images


def build_request(blobs: list[bytes], protocol: str) -> dict:
    b64 = [base64.b64encode(b).decode("ascii") for b in blobs]
    if protocol == "v1":
        return {"instances": [{"image": {"b64": s}} for s in b64]}
    return {"inputs": [{"name": "image", "shape": [len(b64)], "datatype": "BYTES", "data": b64}]}


def endpoint(url: str, model: str, protocol: str) -> str:
    base = url.rstrip("/")
    return f"{base}/v1/models/{model}:predict" if protocol == "v1" else f"{base}/v2/models/{model}/infer"


def parse_response(body: dict, protocol: str) -> list[dict]:
    """Both protocols -> [{label, class_index, confidence, top_k?}]."""
    if protocol == "v1":
        return list(body["predictions"])
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    return [{"label": label, "class_index": int(idx), "confidence": float(conf)}
            for label, idx, conf in zip(outputs["label"], outputs["class_index"], outputs["confidence"])]


def predict(url: str, blobs: list[bytes], protocol: str = "v1", model: str = constants.MODEL_NAME,
            timeout_s: float = 60.0) -> list[dict]:
    """POST the images; BadInput for a 4xx (bad input), DependencyUnavailable when the service is not."""
    import httpx

    target = endpoint(url, model, protocol)
    try:
        response = httpx.post(target, json=build_request(blobs, protocol), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DependencyUnavailable(f"cannot reach {target}: {exc}; is `gourmetgram serve` running?") from exc
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:500]}
    if 400 <= response.status_code < 500:
        raise BadInput(f"{target} rejected the request ({response.status_code}): "
                        f"{body.get('error', body)}")
    if response.status_code != 200:
        raise DependencyUnavailable(f"{target} failed ({response.status_code}): {body.get('error', body)}; "
                                    "see the service's log")
    return parse_response(body, protocol)


def format_table(names: list[str], predictions: list[dict]) -> str:
    rows = [("IMAGE", "LABEL", "CONFIDENCE", "TOP-K")]
    for name, p in zip(names, predictions):
        top = ", ".join(f"{t['label']} {t['confidence']:.3f}" for t in p.get("top_k", [])) or "-"
        rows.append((name, str(p["label"]), f"{p['confidence']:.4f}", top))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)


def _predict(args: argparse.Namespace) -> int:
    images = read_images(args.images)
    predictions = predict(args.url, [b for _, b in images], args.protocol, args.model, args.timeout)
    if args.json:
        print(json.dumps([{"image": n, **p} for (n, _), p in zip(images, predictions)], indent=2))
    else:
        print(format_table([n for n, _ in images], predictions))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify images through the served model",
        description="Send JPEG/PNG files to a serving endpoint (the local gateway by default, or an "
        "InferenceService URL) and print label, confidence and top-k per image.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument("--url", default=DEFAULT_URL, help="base URL (default: %(default)s)")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1",
                        help="KServe protocol (v2 answers without top-k); default %(default)s")
    parser.add_argument("--model", default=constants.MODEL_NAME, help="model name (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_predict)
