"""Drop-in NPALoss for the frameworks researchers already train with.

Each adapter is a module of its own, imported only when asked for, and its framework is
an optional extra of the ``npaloss`` package (none is a dependency of ``npa_train``):

=====================================  ==============================  =====================
module                                 what                            extra
=====================================  ==============================  =====================
:mod:`npa_train.adapters.smp`          ``NPALoss(mode="multiclass",    ``smp``
                                       ignore_index=...)``, smp's
                                       loss conventions
:mod:`npa_train.adapters.lightning`    ``NPASegmentationModule``, a    ``lightning``
                                       LightningModule for any
                                       segmentation model
:mod:`npa_train.adapters.torchgeo`     ``NPASegmentationTask``:        ``torchgeo``
                                       torchgeo's
                                       SemanticSegmentationTask with
                                       ``loss="npa"``
:mod:`npa_train.adapters.mmseg`        ``NPALoss`` registered in       ``mmseg``
                                       mmsegmentation 1.x's
                                       ``MODELS`` on import
:mod:`npa_train.adapters.monai`        ``NPALoss`` in MONAI's          ``monai``
                                       conventions (2-D and 3-D) and
                                       ``NPAWeightsd(keys="label")``
=====================================  ==============================  =====================

All of them compute the weights from the (augmented) target batch on its device with
:func:`npa_train.online.npa_weights`: exact Eq. 1 counts and the transform of
``npa-precompute``, so nothing else has to travel through the data pipeline.
"""

from __future__ import annotations

__all__ = ["missing_framework"]

#: Where to get npaloss from: it is on no package index, so its extras are installed
#: from a clone or from a VCS URL (or a wheel built from either).
_INSTALL = (
    'from a clone: pip install -e ".[{extra}]"; from the repository: '
    'pip install "npaloss[{extra}] @ git+<repository URL>"; or the framework alone: '
    "pip install {requirement}"
)


def missing_framework(module: str, extra: str, requirement: str, exc: ImportError) -> ImportError:
    """The ImportError an adapter raises when its framework does not import.

    Parameters
    ----------
    module : str
        The adapter (``"npa_train.adapters.torchgeo"``).
    extra : str
        npaloss's extra that installs the framework (``"torchgeo"``).
    requirement : str
        The framework's own requirement (``"'torchgeo>=0.8'"``), shown quoted for a shell.
    exc : ImportError
        The original error, quoted at the end (it names the module that is missing).
    """
    how = _INSTALL.format(extra=extra, requirement=requirement)
    return ImportError(f"{module} needs {extra}: {how} ({type(exc).__name__}: {exc})")
