"""Which device to run on: :func:`resolve_device` (used by fit, evaluate and predict)."""

from __future__ import annotations

import torch

from npa_precompute.errors import ParameterError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device``: ``None`` is cuda if available, else cpu.

    Parameters
    ----------
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device`` or None

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError (``ParameterError`` naming ``device``)
        Unknown device string, or a CUDA device requested on a machine without one (or
        without that index).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError("device", f"must be 'cpu' or 'cuda', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ParameterError("device", f"must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(
                "device",
                "'cuda' was requested but CUDA is not available (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(
                "device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return dev
