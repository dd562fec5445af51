"""mmsegmentation 1.x: an EncoderDecoder config whose decode head's loss is NPALoss.

    python examples/mmseg_config.py --steps 10

With a full mmcv (compiled ops) this builds the model from ``model`` below through
mmseg's registry and trains it ``--steps`` steps on random crops of an ISPRS tile. With
mmcv-lite (what ``make test`` installs) mmseg's models do not import; then it builds the
config's ``loss_decode`` and trains a small network through it, called as mmseg's decode
head calls it (``loss(seg_logits, seg_label, weight=None, ignore_index=255)``), and
says so.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from vaihingen import RandomCrops

# --8<-- [start:config]
custom_imports = dict(imports=["npa_train.adapters.mmseg"], allow_failed_imports=False)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[1.0] * 3),
    backbone=dict(
        type="ResNetV1c",
        depth=18,
        num_stages=4,
        out_indices=(3,),
        norm_cfg=dict(type="BN", requires_grad=True),
    ),
    decode_head=dict(
        type="FCNHead",
        in_channels=512,
        in_index=0,
        channels=64,
        num_convs=1,
        num_classes=6,
        ignore_index=255,
        align_corners=False,
        # loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        loss_decode=dict(type="NPALoss", k=32, transform="log10:L=0.5", loss_weight=1.0),
    ),
)
# --8<-- [end:config]


def _encoder_decoder(steps: int, data: RandomCrops) -> float:
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    for name in custom_imports["imports"]:
        importlib.import_module(name)
    net = MODELS.build(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps):
        items = [data[2 * step + i] for i in range(2)]
        samples = []
        for it in items:
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=it["mask"][None])
            s.set_metainfo({"img_shape": it["mask"].shape, "pad_shape": it["mask"].shape})
            samples.append(s)
        losses = net.loss(torch.stack([it["image"] for it in items]), samples)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def _loss_only(steps: int, data: RandomCrops) -> float:
    adapter = importlib.import_module(custom_imports["imports"][0])
    cfg = dict(model["decode_head"]["loss_decode"])
    loss_decode = getattr(adapter, cfg.pop("type"))(**cfg)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 6, 1))  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        items = [data[2 * step + i] for i in range(2)]
        image = torch.stack([it["image"] for it in items])
        label = torch.stack([it["mask"] for it in items])
        loss = loss_decode(net(image), label, weight=None, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps (10)")
    parser.add_argument("--crop", type=int, default=128, help="crop size in pixels (128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = RandomCrops(args.crop, 2 * args.steps)
    try:
        importlib.import_module("mmseg.models")
    except ImportError as exc:
        print(f"mmseg.models does not import ({exc}): training the config's loss_decode only")
        loss = _loss_only(args.steps, data)
    else:
        loss = _encoder_decoder(args.steps, data)
    print(f"mmseg_config: {args.steps} steps, train_loss {loss:.4f}")


if __name__ == "__main__":
    main()
