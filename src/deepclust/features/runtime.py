"""How a backbone's forward pass runs when images are embedded: PyTorch, or ONNX Runtime or
OpenVINO on a CPU.

PyTorch's eager mode runs Lite0 at a small share of what a CPU can do; the same network
exported to ONNX and run by ONNX Runtime gives the same features (within about 1e-5) several
times faster (``benchmarks/embed_throughput.py --runtimes``). :func:`forward_for` picks:

- ``torch``: the backbone itself (always on CUDA and MPS, and for training);
- ``onnxruntime``: the backbone exported once to ONNX (:func:`export_backbone`, the exporter
  ``deepclust export-onnx`` uses too), kept in the user's cache (``DEEPCLUST_CACHE``, default
  ``~/.cache/deepclust``) under a hash of the architecture, the weights themselves, the input
  size, the head and the flip averaging, and run by ONNX Runtime;
- ``openvino``: the same exported model run by OpenVINO (``pip install 'deepclust[openvino]'``),
  compiled for the CPU at fp32 (its precision hint set to f32: the features equal PyTorch's
  within about 1e-5, as ONNX Runtime's);
- reduced precision only when asked (``precision``, ``--precision``): ``int8`` quantizes the
  export statically with ONNX Runtime (QDQ, weights per channel, activations calibrated on the
  first 64 images of the first job that asks, then kept beside the fp32 file and reused, so
  every later job embeds with the same model) and runs it with ONNX Runtime; ``bf16`` runs the
  export with OpenVINO at its bf16 precision hint, on CPUs with bf16 instructions only. The
  cache signature of the vectors names the precision, so vectors of several precisions never mix;
- ``auto`` (the default): ``onnxruntime`` on a CPU where it is installed and the export works,
  else ``torch``, with one line saying why. The environment variable ``DEEPCLUST_RUNTIME``
  (``torch`` or ``onnxruntime``) says what ``auto`` means on a machine (the test suite sets
  ``torch``: each export takes 10-30 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import re
import tempfile
from typing import Callable

import numpy as np
import torch

from deepclust.errors import DeepclustError
from deepclust.features.backbones import Backbone
from deepclust.features.cache import cache_root
from deepclust.io import UMASK

log = logging.getLogger("deepclust")

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
CALIBRATION_IMAGES = 64
INSTALL = {"onnxruntime": "pip install onnxruntime onnx onnxscript", "openvino": "pip install 'deepclust[openvino]' "
           "(openvino, onnx, onnxscript)"}
OPSET = 18
_SESSIONS: dict[tuple[str, str], Callable] = {}  # one session per model file in a process (a Dask worker's partitions)


def model_key(backbone: Backbone) -> str:
    """A hash of everything the exported model computes from: the signature (architecture,
    input size, preprocessing, flip averaging) and every weight and buffer, head included.
    (The signature alone names random weights the same every time.)"""
    digest = hashlib.sha256(backbone.signature().encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def export_backbone(backbone: Backbone, path: str, opset: int = OPSET) -> None:
    """Write ``backbone`` (in eval mode) as an ONNX model to ``path``, atomically: input
    ``images`` (batch, 3, S, S) float32, output ``embeddings``; the batch size is free."""
    size = backbone.image_size
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp.onnx")
    os.close(fd)
    try:
        chatter = io.StringIO()  # the exporter prints its progress (dozens of lines): shown with --verbose only
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            program = torch.onnx.export(backbone.eval(), (torch.zeros(2, 3, size, size),), input_names=["images"],
                                        output_names=["embeddings"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        opset_version=opset, dynamo=True, verbose=False)
            program.save(tmp)
        if chatter.getvalue().strip():
            log.debug("torch.onnx.export said:\n%s", chatter.getvalue().rstrip())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; the model is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxForward:
    """A backbone's forward pass by ONNX Runtime: called with a float32 CPU tensor of
    preprocessed images, returns the embeddings as a tensor, like the backbone."""

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime  # deferred: loading it takes time that PyTorch-only work need not spend

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # as many as PyTorch: no oversubscription
        options.inter_op_num_threads = 1
        self.path = path
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"images": np.ascontiguousarray(images.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)


class OpenVinoForward:
    """A backbone's forward pass by OpenVINO on the CPU, from the same ONNX file, compiled at
    fp32 (``INFERENCE_PRECISION_HINT`` f32: no silent reduced precision) with as many threads
    as PyTorch."""

    def __init__(self, path: str, threads: int | None = None, precision: str = "f32"):
        import openvino  # deferred: an optional dependency

        core = openvino.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DeepclustError("--precision bf16 needs a CPU with bf16 instructions (AVX-512 BF16 or AMX); this "
                                 f"one offers {', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}: "
                                 "use --precision fp32 or int8")
        self.path = path
        self.model = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY"})

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(np.ascontiguousarray(images.numpy(), dtype=np.float32))[0]
        return torch.from_numpy(np.asarray(out))


def onnx_path(backbone: Backbone) -> str:
    """Where the ONNX export of ``backbone`` is kept: the user's cache, under its name and
    :func:`model_key` (the weights themselves)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone.name)  # hf-hub:org/repo, open_clip:name: a file name anywhere
    return os.path.join(cache_root(), "onnx", f"{safe}-{model_key(backbone)}.onnx")


def _export_once(backbone: Backbone, path: str, purpose: str) -> None:
    if not os.path.isfile(path):
        log.info("exporting %s to ONNX once, for %s (%s)", backbone.name, purpose, path)
        export_backbone(backbone, path)


def quantize_int8(path: str, calibration: Callable[[], np.ndarray] | None) -> str:
    """The int8 model of the fp32 export ``path`` (ONNX Runtime static quantization, QDQ,
    per-channel int8 weights, uint8 activations calibrated on the images ``calibration()``
    returns), written once beside it as ``*-int8.onnx`` and reused."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = path[: -len(".onnx")] + "-int8.onnx"
    if os.path.isfile(out):
        return out
    if calibration is None:
        raise DeepclustError("an int8 model is calibrated on images; none were given")
    images = np.ascontiguousarray(calibration(), dtype=np.float32)
    log.info("quantizing %s to int8 once, calibrated on %d images", os.path.basename(path), len(images))

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.batches, None)

    folder = os.path.dirname(out)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".quantize-") as tmp:
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            quant_pre_process(path, os.path.join(tmp, "pre.onnx"))
            quantize_static(os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx"), Batches(),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        os.chmod(os.path.join(tmp, "int8.onnx"), 0o666 & ~UMASK)
        os.replace(os.path.join(tmp, "int8.onnx"), out)
    return out


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DeepclustError(f"precision={precision!r} is not known; choose one of: {', '.join(PRECISIONS)}")
    return precision


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise DeepclustError(f"runtime={runtime!r} is not known; choose one of: {', '.join(RUNTIMES)}")
    return runtime


def forward_for(backbone: Backbone, runtime: str = "auto", device: str | torch.device = "cpu",
                precision: str = "fp32", calibration: Callable[[], np.ndarray] | None = None
                ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(the forward pass to embed with, the runtime it uses) for ``backbone`` on ``device``.
    ``precision`` other than fp32 (module docstring) needs a CPU; ``calibration()`` gives the
    preprocessed images an int8 model is calibrated on, the first time one is made."""
    check_runtime(runtime)
    if check_precision(precision) != "fp32":
        return _reduced(backbone, runtime, torch.device(device), precision, calibration)
    if runtime == "auto" and os.environ.get("DEEPCLUST_RUNTIME"):
        runtime = check_runtime(os.environ["DEEPCLUST_RUNTIME"])
    device = torch.device(device)
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return backbone, "torch"
    if device.type != "cpu":
        raise DeepclustError(f"runtime={runtime} runs on a CPU; with --device {device} use --runtime torch "
                             "(or auto)")
    engine = "openvino" if runtime == "openvino" else "onnxruntime"
    try:
        importlib.import_module(engine)  # deferred, as above; an install may lack it
    except ImportError:
        if runtime != "auto":
            raise DeepclustError(f"runtime={runtime} needs {engine}: {INSTALL[engine]} (or use --runtime torch)") from None
        log.info("embedding with PyTorch (%s for a CPU path several times faster)", INSTALL[engine])
        return backbone, "torch"
    path = onnx_path(backbone)
    try:
        if (engine, path) not in _SESSIONS:
            _export_once(backbone, path, engine)
            _SESSIONS[engine, path] = (OpenVinoForward if engine == "openvino" else OnnxForward)(path)
        return _SESSIONS[engine, path], engine
    except Exception as exc:  # noqa: BLE001  any export or load failure: PyTorch still embeds
        if runtime != "auto":
            raise DeepclustError(f"{engine} cannot run {backbone.name} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); use --runtime torch") from None
        log.warning("embedding with PyTorch: %s could not be exported to ONNX (%s)", backbone.name,
                    type(exc).__name__)
        return backbone, "torch"


def _reduced(backbone: Backbone, runtime: str, device: torch.device, precision: str, calibration):
    """The forward pass at ``precision`` bf16 or int8 (see the module docstring)."""
    engine = "openvino" if precision == "bf16" else "onnxruntime"
    if device.type != "cpu" or runtime not in ("auto", engine):
        raise DeepclustError(f"--precision {precision} runs with {engine} on a CPU; use --runtime auto (or {engine}) "
                             "and --device cpu, or --precision fp32")
    try:
        importlib.import_module(engine)
    except ImportError:
        raise DeepclustError(f"--precision {precision} needs {engine}: {INSTALL[engine]}") from None
    path = onnx_path(backbone)
    key = (f"{engine}-{precision}", path)
    if key not in _SESSIONS:
        _export_once(backbone, path, f"{engine} {precision}")
        if precision == "int8":
            _SESSIONS[key] = OnnxForward(quantize_int8(path, calibration))
        else:
            _SESSIONS[key] = OpenVinoForward(path, precision="bf16")
    return _SESSIONS[key], f"{engine} {precision}"
