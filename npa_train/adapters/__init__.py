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

__all__: list[str] = []
