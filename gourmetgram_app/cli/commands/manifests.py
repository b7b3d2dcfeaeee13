"""``gourmetgram manifests``: render the serving chart into inference_services/*.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path


def _render(args: argparse.Namespace) -> int:
    from gourmetgram import manifests

    stages = [args.stage] if args.stage else list(manifests.RENDERED_STAGES)
    out_dir = Path(args.output_dir) if args.output_dir else manifests.MANIFEST_DIR
    if args.check:
        stale = manifests.stale_manifests(out_dir, stages)
        for path in stale:
            print(f"stale: {path} differs from a fresh render of charts/gourmetgram")
        if stale:
            print("run `gourmetgram manifests render` and commit the result")
            return 1
        print(f"up to date: {', '.join(str(manifests.manifest_path(s, out_dir)) for s in stages)}")
        return 0
    for path in manifests.write_manifests(out_dir, stages):
        isvc = manifests.find_inference_service(manifests.load_manifest(path))
        canary = manifests.canary_percent(isvc)
        print(
            f"wrote {path}: InferenceService {isvc['metadata']['namespace']}/{isvc['metadata']['name']}, "
            f"storageUri {isvc['spec']['predictor']['model']['storageUri']}, "
            f"canary {'none' if canary is None else f'{canary}%'}"
        )
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "manifests",
        help="render the InferenceService manifests from the Helm chart",
        description="charts/gourmetgram is the source of inference_services/<stage>.yaml; "
        "rendered offline with the Helm SDK (no helm binary, no cluster).",
    )
    sub = parser.add_subparsers(dest="manifests_command", metavar="ACTION", required=True)
    render = sub.add_parser(
        "render",
        help="write inference_services/<stage>.yaml (or check they are up to date)",
        description="Render values.yaml + values-<stage>.yaml (+ the rollout overlay) per stage.",
    )
    render.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a committed manifest differs from a fresh render")
    render.add_argument("--stage", choices=("staging", "production"), help="only this stage")
    render.add_argument("--output-dir", help="target folder (default: inference_services/)")
    render.set_defaults(func=_render)
