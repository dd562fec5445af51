#!/usr/bin/env bash
# GPU check of npa_train (about 3-6 minutes on one H200): builds the demo store, trains
# torchvision's DeepLabV3-ResNet50 (no pretrained weights, batch 6, 513² crops, AMP bf16,
# auxiliary loss 0.4) and the small FCN for a few hundred --device cuda iterations each,
# measures the loader's crops/s, and checks that the NPA loss, its gradients and the
# batched augmentation agree between CPU and CUDA on one batch. One JSON object goes to
# $OUT/gpu_check.json and to stdout. Then benchmarks/bench_online.py times the online NPA
# weights against a DeepLabV3-ResNet101 bf16 step: $OUT/bench_online.{json,md}.
#
# Environment:
#   PYTHON   interpreter with torch (CUDA) and the project importable (default python3);
#            zarr, numcodecs, numba, click, tifffile, pillow, tqdm must import too
#   OUT      output folder (default ./gpu_check_out)
#   ITERS_DEEPLAB, ITERS_FCN, WORKERS, CROP   override 200, 300, min(8, cores - 1), 513
#   DEVICE   cuda (default); cpu runs the same steps as a dry run (no AMP)
#
# Usage (from the repository root):  PYTHON=python3 OUT=/tmp/out bash benchmarks/gpu_check.sh
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-./gpu_check_out}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/npa_gpu_check.XXXXXX")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s.%N)
"$PYTHON" -m npa_precompute run "$REPO/data/demo/gts_eroded_for_participants" \
    --images "$REPO/data/demo/top" --out "$WORK/demo.zarr" --k 8,32 \
    --transform log10:L=0.5 -q >&2
T1=$(date +%s.%N)
STORE_S=$(awk "BEGIN {print $T1 - $T0}")

timeout 280 "$PYTHON" - "$WORK" "$OUT" "$STORE_S" <<'PY'
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

work, out_dir, store_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = os.path.join(work, "demo.zarr")
WNAME = "k32_log10_L0.5"
t_start = time.perf_counter()
report = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "cpus": os.cpu_count(),
    "store_build_s": round(store_s, 2),
}
try:
    import torchvision

    report["torchvision"] = torchvision.__version__
except Exception as exc:  # noqa: BLE001
    report["torchvision"] = None
    report["torchvision_error"] = f"{type(exc).__name__}: {exc}"
dev = torch.device(os.environ.get("DEVICE", "cuda"))
CROP = int(os.environ.get("CROP", 513))
report["crop"], report["batch"] = CROP, 6
if dev.type == "cuda" and not torch.cuda.is_available():
    report["error"] = "CUDA is not available"
    print(json.dumps(report, indent=2))
    sys.exit(1)

from torch.utils.data import DataLoader  # noqa: E402

from npa_train.augment import AugmentConfig  # noqa: E402
from npa_train.data import StoreCropDataset  # noqa: E402
from npa_train.loss import npa_cross_entropy  # noqa: E402
from npa_train.model import build_model  # noqa: E402
from npa_train.train import fit  # noqa: E402

workers = int(os.environ.get("WORKERS", min(8, max((os.cpu_count() or 2) - 1, 1))))


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def section(name, fn):
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # noqa: BLE001 - record the failure, go on with the rest
        report[name] = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-2000:]}
    report[name]["section_s"] = round(time.perf_counter() - t0, 1)
    print(f"# {name}: {json.dumps(report[name])[:400]}", file=sys.stderr, flush=True)


# ---- the loader: windows read by the workers, resampled batched on the GPU ---------------------
def loader():
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=CROP), length=10**6,
                          output="window")
    n_batches = 60
    dl = DataLoader(ds, batch_size=6, sampler=range(0, (n_batches + 3) * 6),
                    num_workers=workers, collate_fn=ds.collate, pin_memory=True,
                    prefetch_factor=4, generator=torch.Generator().manual_seed(0))
    batches, t = [], None
    for i, b in enumerate(dl):
        if i == 3:
            t = time.perf_counter()
        if i >= 3 and len(batches) < 10:
            batches.append(b)
    loader_s = time.perf_counter() - t
    # the batched resampling on the GPU (what a CUDA run does per step)
    for b in batches[:2]:
        ds.warp(b, dev)
    sync()
    t = time.perf_counter()
    for b in batches:
        ds.warp(b, dev)
    sync()
    warp_s = time.perf_counter() - t
    return {"workers": workers, "crops_per_s": round(n_batches * 6 / loader_s, 1),
            "gpu_warp_crops_per_s": round(len(batches) * 6 / warp_s, 1),
            "note": f"workers read windows (full augmentation, {CROP}² crops, batch 6); "
                    "gpu_warp = resize/rotate/mirror/blur of those windows on the device"}


# ---- training speed through npa_train.train.fit ------------------------------------------------
def train(model, iters, **kw):
    stamps = []
    out = os.path.join(work, f"fit_{model}")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = fit(store, out, weights=WNAME, loss="npa", model=model, iters=iters, batch=6,
                  crop=CROP, device=dev.type, workers=workers, progress=False,
                  checkpoint_every=0, callback=lambda i, lr, loss: stamps.append(time.perf_counter()),
                  **kw)
    skip = min(20, iters // 4)  # cudnn autotuning and worker start-up
    steady = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(out, "log.csv")) as f:
        rows = f.read().splitlines()[1:]
    aux = [float(r.split(",")[3]) for r in rows if r.split(",")[3]]
    return {"iters": summary["iterations"], "it_per_s_steady": round(steady, 2),
            "crops_per_s": round(6 * steady, 1),
            "it_per_s_incl_startup": round(summary["iterations_per_s"], 2),
            "first_loss": round(summary["first_loss"], 4),
            "last_loss": round(summary["last_loss"], 4),
            "finite": all(math.isfinite(float(r.split(",")[2])) for r in rows),
            "aux_loss_logged": bool(aux), "amp": cfg["amp_dtype"], "warp_on": cfg["warp_on"],
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if dev.type == "cuda" else None}


# ---- CPU vs CUDA on one batch -------------------------------------------------------------------
def parity():
    torch.manual_seed(0)
    ds = StoreCropDataset(store, WNAME, augment=AugmentConfig(crop=CROP), length=12,
                          output="window")
    batch = ds.collate([ds[i] for i in range(6)])
    cpu = ds.warp(batch, "cpu")
    gpu = ds.warp(batch, dev)
    same = gpu["label"].cpu() == cpu["label"]
    warp = {"image_max_abs_diff": float((gpu["image"].cpu() - cpu["image"]).abs().max()),
            "label_mismatch_fraction": float(1 - same.float().mean()),
            "weight_max_abs_diff_where_labels_agree":
                float((gpu["weight"].cpu() - cpu["weight"]).abs()[same].max())}
    model = build_model("small_fcn", in_channels=3, num_classes=6)
    image, label, weight = cpu["image"], cpu["label"], cpu["weight"]

    def run(device, amp):
        m = build_model("small_fcn", in_channels=3, num_classes=6)
        m.load_state_dict(model.state_dict())
        m.to(device).train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = m(image.to(device))
        loss = npa_cross_entropy(logits.float(), label.to(device), weight.to(device))
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in m.parameters()))
        return loss.item(), norm.item()

    l_cpu, g_cpu = run(torch.device("cpu"), False)
    l_gpu, g_gpu = run(dev, False)
    l_amp, g_amp = run(dev, True)
    return {"npa_loss_cpu": l_cpu, "npa_loss_cuda": l_gpu,
            "loss_abs_diff": abs(l_cpu - l_gpu),
            "grad_norm_cpu": g_cpu, "grad_norm_cuda": g_gpu,
            "grad_norm_rel_diff": abs(g_cpu - g_gpu) / g_cpu,
            "loss_abs_diff_cuda_bf16_autocast": abs(l_cpu - l_amp),
            "grad_norm_rel_diff_cuda_bf16_autocast": abs(g_cpu - g_amp) / g_cpu,
            "warp_cpu_vs_cuda": warp}


section("parity", parity)
section("loader", loader)
if report.get("torchvision"):
    section("deeplabv3_resnet50", lambda: train(
        "deeplabv3_resnet50", int(os.environ.get("ITERS_DEEPLAB", 200))))
else:
    report["deeplabv3_resnet50"] = {"skipped": "torchvision does not import"}
section("small_fcn", lambda: train("small_fcn", int(os.environ.get("ITERS_FCN", 300))))
report["total_s"] = round(time.perf_counter() - t_start + store_s, 1)
text = json.dumps(report, indent=2)
with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
    f.write(text + "\n")
print(text)
PY
# online weights against a DeepLabV3-ResNet101 bf16 step (and on the CPU); its own JSON
timeout 280 "$PYTHON" "$REPO/benchmarks/bench_online.py" --json "$OUT/bench_online.json" \
    --data-dir "$WORK/bench" > "$OUT/bench_online.md" || echo "bench_online.py failed" >&2
rm -rf "$WORK"
