"""``gourmetgram data``: build the demo dataset, validate a dataset."""

from __future__ import annotations

import argparse

from gourmetgram.tracking import home


def _build_demo(args: argparse.Namespace) -> int:
    from gourmetgram.data.demo import build_demo_dataset
    from gourmetgram.data.layout import validate_dataset

    root = build_demo_dataset(args.output or home() / "data" / "demo", seed=args.seed)
    report = validate_dataset(root)
    print(f"demo dataset written to {root}: {report.summary()}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from gourmetgram.data.ingest import ingest
    from gourmetgram.data.layout import validate_dataset

    root = ingest(args.dataset, home() / "data" / "ingested")
    report = validate_dataset(root, check_images=not args.skip_image_check)
    print(f"{root}: OK, {report.summary()}")
    for split, counts in report.counts.items():
        print(f"  {split:<11} " + " ".join(f"{n:>5}" for n in counts))
    return 0


def _upload(args: argparse.Namespace) -> int:
    from gourmetgram import objectstore
    from gourmetgram.data.layout import validate_dataset
    from gourmetgram.errors import BadInput

    if not objectstore.is_s3(args.destination):
        raise BadInput(f"{args.destination!r}: upload to an s3://BUCKET/PREFIX URI")
    report = validate_dataset(args.dataset, check_images=False)  # the layout ingest expects, before any upload
    written = objectstore.upload_tree(args.dataset, args.destination)
    print(f"uploaded {len(written)} files of {report.summary()} to {args.destination}")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="build the demo dataset or validate a dataset",
                                   description="Datasets in the Food-11 layout.")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    demo = sub.add_parser("build-demo", help="write the embedded demo dataset (no download)",
                          description="Render scikit-learn's real handwritten digits as colour photos in "
                          "the Food-11 layout, with the evaluation suite's extra sets.")
    demo.add_argument("--output", help="target folder (default: $GOURMETGRAM_HOME/data/demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed for rendering and splits")
    demo.set_defaults(func=_build_demo)
    val = sub.add_parser("validate", help="check a dataset folder, archive or URL",
                         description="Check the split and class folders, class names and every image; "
                         "print counts per class and the content fingerprint.")
    val.add_argument("dataset", help="folder, .zip/.tar.gz archive, or http(s) URL of one")
    val.add_argument("--skip-image-check", action="store_true", help="do not decode every image")
    val.set_defaults(func=_validate)
    up = sub.add_parser("upload", help="copy a dataset folder to the object store (s3://)",
                        description="Check the Food-11 layout, then copy every file to s3://BUCKET/PREFIX "
                        "(the endpoint from AWS_ENDPOINT_URL, keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), "
                        "each checked by size: what the cluster's training pipeline ingests as dataset_uri.")
    up.add_argument("dataset", help="dataset folder in the Food-11 layout")
    up.add_argument("destination", help="s3://BUCKET/PREFIX, e.g. s3://gourmetgram-datasets/food11")
    up.set_defaults(func=_upload)
