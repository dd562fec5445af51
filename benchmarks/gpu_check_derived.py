"""Device check of weights derived from the counts (issue 13), about one minute.

Builds two stores of the demo tiles (``data/demo``): weights stored, and counts only
(``--no-store-weights``). Then, on ``--device`` (default cuda):

* :class:`npa_train.weights.TorchDeriver` on the device against the CPU
  :class:`~npa_precompute.derived.Deriver` (and the stored arrays), whole tiles, for every
  transformation and a multi-scale name: equal bit for bit (float32);
* a training batch in ``"window"`` mode: the counts store's batch (weights derived in
  ``warp`` on the device) against the stored store's batch: equal crops;
* the device time of deriving a batch of six 1026² count windows.

Prints one JSON object (also to ``--out``). ``--device cpu`` is a dry run.

Usage::

    python benchmarks/gpu_check_derived.py [--device cuda] [--out derived_check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMS = ("log10:L=0.5", "ln:L=0.5", "norm:L=0.5", "norm:L=0", "raw", "log:a=2,L=0.25")
KS = (8, 32, 64)


def main() -> int:
    import torch

    from npa_precompute import weights_name
    from npa_precompute.derived import parse_weights_name
    from npa_precompute.pipeline import run_precompute
    from npa_precompute.store import open_store, open_tile
    from npa_train.data import StoreCropDataset
    from npa_train.weights import TorchDeriver

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="npa_derived_check_"))
    demo = ROOT / "data" / "demo"
    kw = dict(images=[str(demo / "top")], ks=KS, transforms=TRANSFORMS)
    labels = [str(demo / "gts_eroded_for_participants")]
    run_precompute(labels, work / "stored.zarr", **kw)
    run_precompute(labels, work / "counts.zarr", store_weights=False, **kw)
    report: dict = {"device": str(dev), "torch": torch.__version__, "mismatches": []}
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    rs, rc = open_store(work / "stored.zarr"), open_store(work / "counts.zarr")
    names = [weights_name(k, t) for k in KS for t in TRANSFORMS] + ["ms_k8-32-64_log10_L0.5"]
    checked = 0
    for tid in sorted(rs["tiles"].group_keys()):
        ts, tc = open_tile(rs, tid), open_tile(rc, tid)
        label = torch.from_numpy(tc.label[...].astype(np.int64))[None].to(dev)
        for name in names:
            spec = parse_weights_name(name)
            ranges = {k: tc.count_range(k) for k in spec.ks}
            td = TorchDeriver(spec, [ranges], ignore_index=tc.ignore_index)
            counts = np.stack([tc.affinity(k)[...] for k in spec.ks]).view(np.int16)
            got = td(torch.from_numpy(counts)[None].to(dev), label,
                     torch.zeros(1, dtype=torch.int64, device=dev))[0].cpu().numpy()  # fmt: skip
            cpu = tc.weights(name)[...]
            ok = np.array_equal(got.view(np.uint32), cpu.view(np.uint32))
            if not spec.multiscale:
                ok &= np.array_equal(cpu.view(np.uint32), ts.weights(name)[...].view(np.uint32))
            checked += 1
            if not ok:
                report["mismatches"].append(f"{tid} {name}")
    report["whole_tile_checks"] = checked
    a = StoreCropDataset(work / "stored.zarr", "k32_log10_L0.5", crop=513, output="window")
    b = StoreCropDataset(work / "counts.zarr", "k32_log10_L0.5", crop=513, output="window")
    ba, bb = a.collate([a[i] for i in range(6)]), b.collate([b[i] for i in range(6)])
    oa, ob = a.warp(ba, dev), b.warp(bb, dev)
    report["batch_equal"] = bool(torch.equal(oa["weight"], ob["weight"]))
    report["batch_counts_dtype"] = str(bb["counts"].dtype)
    big = torch.randint(0, 4000, (6, 1, 1026, 1026), dtype=torch.int16, device=dev)
    lab = torch.randint(0, 6, (6, 1026, 1026), device=dev)
    td = b._torch_deriver
    tix = torch.zeros(6, dtype=torch.int64, device=dev)
    for _ in range(3):
        td(big, lab, tix)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        td(big, lab, tix)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    report["derive_batch_6x1026sq_ms"] = round((time.perf_counter() - t0) / 20 * 1e3, 3)
    report["ok"] = not report["mismatches"] and report["batch_equal"]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
