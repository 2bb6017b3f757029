"""Devices by name: the one check that a device asked for exists here."""

from __future__ import annotations

from deepclust.errors import DeepclustError


def resolve_device(name):
    """Check that a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) is usable here; return the
    :class:`torch.device`."""
    import torch  # deferred: a config or a clusterer on numpy checks devices without loading torch first

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeepclustError(f"device='{name}' is not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepclustError(f"device='{name}' asked for, but this machine has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeepclustError(
                f"device='{name}' asked for, but only {torch.cuda.device_count()} GPU(s) exist; use cuda:0"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeepclustError(f"device='{name}' asked for, but MPS is not available here; use --device cpu")
    return device
