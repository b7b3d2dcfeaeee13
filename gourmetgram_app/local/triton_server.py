"""The local predictor: a real Triton server (PyTriton) running the exported ``model.onnx``.

On the cluster KServe's ``kserve-tritonserver`` runtime loads ``<repo>/<model>/config.pbtxt``
and runs the ONNX model with the onnxruntime backend. Locally PyTriton starts the
tritonserver binary it bundles and binds a Python callable; that callable runs the SAME
``model.onnx`` with ONNX Runtime, and the batching settings (max batch size, preferred
sizes, queue delay, instance count) are read from the SAME ``config.pbtxt``. Clients see
the usual Triton HTTP/gRPC/metrics endpoints (KServe v2 protocol).

Run: ``python -m gourmetgram_app.local.triton_server --model-repository <bundle>/triton``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import sysconfig
from pathlib import Path
from typing import Callable

import numpy as np

from gourmetgram import constants
from gourmetgram.bundle import CONFIG_FILENAME, MODEL_VERSION, ONNX_FILENAME
from gourmetgram.errors import BadInput, entry_point

LOG = logging.getLogger("gourmetgram.triton")
# tritonserver waits this long on exit for open HTTP connections (a client's idle
# keep-alive counts) before it stops; its default of 30 s makes every restart slow.
EXIT_TIMEOUT_S = 3


def libpython_dir() -> str:
    """The folder holding this interpreter's ``libpython3.X.so``."""
    return str(sysconfig.get_config_var("LIBDIR") or Path(sys.executable).resolve().parent.parent / "lib")


def with_libpython(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) with the interpreter's LIBDIR first on LD_LIBRARY_PATH.

    PyTriton's Python-backend stub must load the interpreter's own libpython, otherwise
    model load fails with ``'_thread.RLock' object has no attribute '_recursion_count'``.
    """
    env = dict(os.environ if env is None else env)
    libdir = libpython_dir()
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    if not parts or parts[0] != libdir:
        env["LD_LIBRARY_PATH"] = ":".join([libdir] + [p for p in parts if p != libdir])
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_shm(shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Remove shared-memory regions left by a PyTriton whose process is gone.

    PyTriton names them ``pytrtion<pid>-...`` after the process that started it and unlinks
    them when it stops; a ``kill -9`` (then a supervised restart) leaves one behind each time."""
    removed = []
    for path in shm_dir.glob("pytrtion*-*"):
        m = re.match(r"pytrtion(\d+)-", path.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def model_dir_of(model_repository: Path, model_name: str) -> Path:
    """Check the exported layout and return ``<repo>/<model>``; a clear error otherwise."""
    model_dir = Path(model_repository) / model_name
    for needed in (model_dir / CONFIG_FILENAME, model_dir / MODEL_VERSION / ONNX_FILENAME):
        if not needed.is_file():
            raise BadInput(
                f"{needed} does not exist: {model_repository} is not an exported Triton model "
                f"repository for model {model_name!r} (export one with `gourmetgram pipeline run` or `gourmetgram demo`)"
            )
    return model_dir


def make_infer_fn(model_path: Path, input_name: str, output_name: str, threads: int) -> Callable:
    """One ONNX Runtime session wrapped as a PyTriton batched infer function (one per instance)."""
    import onnxruntime as ort
    from pytriton.decorators import batch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # Idle ORT threads spin waiting for work; on a few shared cores that burns the CPU the
    # transformer and gateway need (measured: ~8 CPU ms per image, benchmarks/serving_performance.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    onnx_input = session.get_inputs()[0].name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[input_name], dtype=np.float32)
        (logits,) = session.run(None, {onnx_input: x})
        return {output_name: logits.astype(np.float32, copy=False)}

    return infer


def build_triton(model_repository: Path, model_name: str, host: str, http_port: int,
                 grpc_port: int, metrics_port: int, exit_timeout_s: int = EXIT_TIMEOUT_S):
    """Create the (not yet started) PyTriton server with the model bound as the config says."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from gourmetgram.export import read_triton_config

    model_dir = model_dir_of(model_repository, model_name)
    cfg = read_triton_config(model_dir)
    if cfg.max_batch_size < 1:
        raise BadInput(f"{model_dir}/{CONFIG_FILENAME} has max_batch_size {cfg.max_batch_size}; the local "
                        "predictor needs a batching model (export with max_batch_size >= 1)")
    instances = max(1, int(cfg.instance_count or 1))
    threads = max(1, (os.cpu_count() or 1) // instances)
    infer_fns = [
        make_infer_fn(model_dir / MODEL_VERSION / ONNX_FILENAME, cfg.input_name, cfg.output_name, threads)
        for _ in range(instances)
    ]
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=int(cfg.max_queue_delay_microseconds or 0),
        preferred_batch_size=list(cfg.preferred_batch_sizes) or None,
    )
    triton = Triton(config=TritonConfig(
        http_address=host, http_port=http_port,
        grpc_address=host, grpc_port=grpc_port,
        metrics_address=host, metrics_port=metrics_port,
        exit_on_error=True, log_verbose=0, exit_timeout_secs=exit_timeout_s,
    ))
    triton.bind(
        model_name=model_name,
        infer_func=infer_fns if len(infer_fns) > 1 else infer_fns[0],
        inputs=[Tensor(name=cfg.input_name, dtype=np.float32, shape=tuple(cfg.input_dims))],
        outputs=[Tensor(name=cfg.output_name, dtype=np.float32, shape=tuple(cfg.output_dims))],
        config=ModelConfig(max_batch_size=int(cfg.max_batch_size), batcher=batcher),
        strict=True,
    )
    LOG.info("model %s: max_batch_size=%s preferred=%s delay=%sus instances=%s (%s ORT threads each)",
             model_name, cfg.max_batch_size, list(cfg.preferred_batch_sizes),
             cfg.max_queue_delay_microseconds, instances, threads)
    return triton


def _raise_interrupt(signum, frame):  # SIGTERM -> the same clean stop as Ctrl-C
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gourmetgram_app.local.triton_server",
                                description="Serve an exported Triton model repository with PyTriton.")
    p.add_argument("--model-repository", required=True, type=Path, help="<bundle>/triton")
    p.add_argument("--model", default=constants.MODEL_NAME, help="model name (folder under the repository)")
    p.add_argument("--host", default=constants.HOST, help="address to bind (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=constants.TRITON_HTTP_PORT)
    p.add_argument("--grpc-port", type=int, default=constants.TRITON_GRPC_PORT)
    p.add_argument("--metrics-port", type=int, default=constants.TRITON_METRICS_PORT)
    p.add_argument("--exit-timeout-secs", type=int, default=EXIT_TIMEOUT_S,
                   help="seconds to wait for open connections on shutdown (default: %(default)s)")
    return p.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # PyTriton copies os.environ when it spawns tritonserver (which spawns the stub), so
    # fixing it here, before the server starts, reaches the stub whoever launched us.
    os.environ.update(with_libpython())
    stale = sweep_stale_shm()
    if stale:
        LOG.warning("removed shared memory left by crashed Triton processes: %s", ", ".join(stale))
    triton = build_triton(args.model_repository, args.model, args.host,
                          args.http_port, args.grpc_port, args.metrics_port,
                          args.exit_timeout_secs)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        triton.serve()  # blocks; returns on Ctrl-C/SIGTERM (it stops itself) or if Triton dies
    except KeyboardInterrupt:
        return 0
    finally:
        triton.stop()
    # serve() came back without being asked to: tritonserver (or PyTriton's proxy) died. Say so
    # and exit non-zero, so the supervisor reports a crash, not a clean stop.
    LOG.error("tritonserver exited on its own (see its messages above); stopping")
    return 1


if __name__ == "__main__":
    sys.exit(main())
