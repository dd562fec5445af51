"""One weights-name type, one counts -> weights path per array library, light imports.

* :class:`npa_precompute.names.WeightsSpec` parses and formats every name (stored,
  derived, ``ms_``, ``online:``): round trips over generated names (hypothesis is not
  installed: a seeded generator instead).
* :func:`npa_train.weights.spec_weights` serves online weights and the device deriver,
  and equals the numpy path bit for bit; one device cache.
* The loss, online weights, adapters and config import without numba (subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from npa_precompute import affinity_maps, parse_transform
from npa_precompute.derived import derive, parse_weights_name
from npa_precompute.errors import ParameterError
from npa_precompute.names import WeightsSpec, counts_name, parse_counts_name
from npa_precompute.transforms import PARAMS, WeightTransform, parse_slug, weights_name
from npa_train import online
from npa_train.weights import CACHE, DeviceCache, TorchDeriver, spec_weights

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# ---- names ---------------------------------------------------------------------------------------
def _random_specs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = [0, 0.25, 0.5, 1, 1.5, 2, 3.75, 10, 1e-3, 123.5]
    for _ in range(n):
        kind = str(rng.choice(list(PARAMS)))
        t = WeightTransform(kind, L=float(rng.choice(values)), a=float(rng.choice([2, 3, 1.5])))
        multiscale = bool(rng.integers(2))
        count = int(rng.integers(1, 5)) if multiscale else 1
        ks = tuple(sorted({int(k) for k in rng.integers(0, 200, size=count)}))
        yield WeightsSpec(ks, t, multiscale=multiscale, online=bool(rng.integers(2)))


def _random_region_specs(n: int, seed: int = 1):
    """Single-k specs of anisotropic regions: one k per axis, 2-D (H, W) or 3-D (D, H, W)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        t = WeightTransform(str(rng.choice(list(PARAMS))), L=float(rng.choice([0, 0.5, 2])))
        region = (0,)
        while len(set(region)) == 1:
            region = tuple(int(k) for k in rng.integers(0, 40, size=int(rng.integers(2, 4))))
        yield WeightsSpec((region,), t, online=bool(rng.integers(2)))


@pytest.mark.parametrize("spec", list(_random_specs(300)) + list(_random_region_specs(60)), ids=str)
def test_every_name_round_trips(spec):
    name = spec.name
    assert WeightsSpec.parse(name) == spec
    assert WeightsSpec.parse(name).name == name
    assert WeightsSpec.parse(f"  weights/{name} ") == spec
    assert parse_slug(spec.transform.slug) == spec.transform
    assert parse_transform(spec.transform.spec) == spec.transform
    assert WeightsSpec.parse(spec.array_name) == spec.stored()
    if not spec.multiscale:
        assert spec.array_name == weights_name(spec.k, spec.transform)


@pytest.mark.parametrize(
    ("name", "canonical", "ks", "k", "family", "online"),
    [
        ("k32_log10_L0.5", "k32_log10_L0.5", (32,), 32, "", False),
        ("k16_ln_L0.5", "k16_ln_L0.5", (16,), 16, "", False),
        ("k130_raw", "k130_raw", (130,), 130, "", False),
        ("k32_norm_L0.50", "k32_norm_L0.5", (32,), 32, "", False),
        ("k8_log_a2.0_L0.25", "k8_log_a2_L0.25", (8,), 8, "", False),
        ("ms_k32-8-16_log10_L0.5", "ms_k8-16-32_log10_L0.5", (8, 16, 32), None, "ms_k8-16-32_",
         False),
        ("ms_k3-3_ln_L0.5", "ms_k3-3_ln_L0.5", (3,), None, "ms_k3-3_", False),
        ("online:k32_log10_L0.5", "online:k32_log10_L0.5", (32,), 32, "online:", True),
        ("ONLINE:k0_raw", "online:k0_raw", (0,), 0, "online:", True),
        ("online:ms_k4-2_norm_L0", "online:ms_k2-4_norm_L0", (2, 4), None, "online:ms_k2-4_",
         True),
    ],
)  # fmt: skip
def test_names_parse_to_their_parts(name, canonical, ks, k, family, online):
    spec = WeightsSpec.parse(name)
    assert (spec.name, spec.ks, spec.k, spec.family, spec.online) == (
        canonical, ks, k, family, online)  # fmt: skip
    assert str(spec) == canonical and spec.halo == max(ks)
    assert parse_weights_name(name) == spec  # derived's name is the same function


@pytest.mark.parametrize(
    "bad",
    ["", "online:", "k32", "k32_", "kx_raw", "k-1_raw", "k32_log10", "k32_log10_La",
     "k32_log10_L-1", "k32_log_L0.5", "k32_log_a1_L0.5", "k32_exp_L1", "x32_raw",
     "ms_k8_log10_L0.5", "k8-16_log10_L0.5", "k32_raw_L1", "k32_log10_Linf", "k1073741825_raw",
     "online:online:k32_raw"],
)  # fmt: skip
def test_bad_names_name_the_weights_argument(bad):
    with pytest.raises(ParameterError, match="not a weights name") as info:
        WeightsSpec.parse(bad)
    assert info.value.param == "weights" and "online:k32_log10_L0.5" in str(info.value)
    with pytest.raises(TypeError):
        WeightsSpec.parse(32)


@pytest.mark.parametrize(
    ("name", "canonical", "k", "halo"),
    [
        ("k2x14x14_log10_L0.5", "k2x14x14_log10_L0.5", (2, 14, 14), 14),
        ("k4x8_raw", "k4x8_raw", (4, 8), 8),
        ("online:k2x14x14_ln_L0.50", "online:k2x14x14_ln_L0.5", (2, 14, 14), 14),
        ("k3x3x3_norm_L0", "k3_norm_L0", 3, 3),  # an isotropic region is its int k
    ],
)  # fmt: skip
def test_region_names_parse_to_their_parts_and_name_their_counts(name, canonical, k, halo):
    spec = WeightsSpec.parse(name)
    assert (spec.name, spec.ks, spec.k, spec.halo) == (canonical, (k,), k, halo)
    assert WeightsSpec.parse(spec.name) == spec
    assert spec.array_name == weights_name(k, spec.transform)
    assert spec.attrs()["k"] == (list(k) if isinstance(k, tuple) else k)  # as JSON stores it
    counts = counts_name(k)
    assert counts == canonical.removeprefix("online:").split("_")[0]
    assert parse_counts_name(counts) == k and parse_counts_name(f"affinity/{counts}") == k
    assert parse_counts_name("k2x") is None and parse_counts_name("label") is None


@pytest.mark.parametrize("bad", ["ms_k2x3-4_raw", "ms_k2x14x14-4x4x4_raw", "k2xx3_raw",
                                 "k2x3x4x5_raw", "k2x_raw", "kx3_raw"])  # fmt: skip
def test_bad_region_names_say_why(bad):
    with pytest.raises(ParameterError, match="not a weights name") as info:
        WeightsSpec.parse(bad)
    assert info.value.param == "weights"
    if bad.startswith("ms_"):
        assert "one k per axis" in str(info.value)


def test_the_old_grammars_are_gone():
    import npa_train.compare as compare
    import npa_train.online as onl

    assert not hasattr(onl, "parse_online_spec")
    assert not hasattr(compare, "parse_weights_name")
    assert not hasattr(compare, "_WEIGHTS_RE")


def test_a_transform_is_one_table_entry(monkeypatch):
    """The recipe of docs/architecture.md: a kind in PARAMS and its formula; the names,
    specs and device weights follow without another file."""
    monkeypatch.setitem(PARAMS, "log2", ("L",))
    t = parse_transform("log2:L=0.5")  # _formula's logarithm branch with a = 10
    spec = WeightsSpec.parse("online:k3_log2_L0.5")
    assert spec.transform == t and spec.name == "online:k3_log2_L0.5"


# ---- one counts -> weights path ------------------------------------------------------------------
TRANSFORMS = ["log10:L=0.5", "ln:L=0", "log:a=2,L=0.25", "norm:L=0.5", "raw"]


def _labels(seed: int, n: int = 3, h: int = 29, w: int = 37) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 5, (n, h // 4 + 1, w // 4 + 1), generator=g)
    lab = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :h, :w].contiguous()
    lab[:, :3, :5] = 255
    return lab


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", ["k{k}", "ms_k1-3-7"])
def test_online_and_device_and_numpy_weights_agree(transform, name):
    """Online weights (per image ranges), the device deriver (a tile's ranges) and numpy's
    derive give the same float32 bits, single k and multi-scale."""
    slug = parse_transform(transform).slug
    spec = WeightsSpec.parse(f"{name.format(k=5)}_{slug}")
    lab = _labels(3)
    counts = online.affinity_counts(lab, spec.ks)
    valid = lab != 255
    got = spec_weights(counts, valid, spec)
    ranges = []
    for i in range(lab.shape[0]):
        a = affinity_maps(lab[i].numpy(), spec.ks)
        per_k = dict(zip(spec.ks, a, strict=True))
        want = derive(spec, per_k, lab[i].numpy(), ignore_index=255)
        np.testing.assert_array_equal(got[i].numpy(), want)
        mask = lab[i].numpy() != 255
        ranges.append({k: (int(per_k[k][mask].min()), int(per_k[k][mask].max())) for k in spec.ks})
    deriver = TorchDeriver(spec, ranges, ignore_index=255)
    stored = torch.from_numpy(np.stack([affinity_maps(x.numpy(), spec.ks) for x in lab]))
    as_bits = stored.numpy().view(np.int16)  # uint16 counts shipped as int16 bits
    dev = deriver(torch.from_numpy(as_bits), lab, torch.arange(lab.shape[0]))
    assert torch.equal(dev, got)
    if not spec.multiscale:  # the public one-k function is the same path
        w = online.weights_from_counts(counts[:, 0], lab, transform, k=spec.k)
        assert torch.equal(w, got)


def test_online_multiscale_weights_through_the_loss_path():
    lab = _labels(5)
    spec = WeightsSpec.parse("online:ms_k2-6_log10_L0.5")
    classes = online.known_classes(5, 255)
    w = online.label_weights(lab, lab, spec, classes=classes, ignore_index=255)
    per_k = [online.npa_weights(lab, k, "log10:L=0.5") for k in spec.ks]
    mean = ((per_k[0].double() + per_k[1].double()) / 2).float()
    assert torch.equal(w, mean)


def test_one_device_cache_with_one_limit():
    cache = DeviceCache(limit=4)
    for i in range(10):
        cache.get(("t", i), lambda i=i: torch.full((2,), i))
        assert len(cache) <= 4
    assert torch.equal(cache.get(("t", 9), lambda: torch.zeros(2)), torch.full((2,), 9))
    lab = _labels(1)
    online.npa_weights(lab, 3, "ln:L=0.5", num_classes=5)
    assert len(CACHE) > 0  # tables, value lists and lookup tables all live in CACHE
    online.clear_workspace()
    assert len(CACHE) == 0


# ---- imports -------------------------------------------------------------------------------------
HEAVY = ("numba", "llvmlite", "zarr", "tifffile", "click")


def _loaded(code: str, *, first: str = "") -> dict:
    """Which heavy modules (and torch) are loaded after ``first`` and then ``code`` run in a
    fresh interpreter; with ``first``, also ``"before"``: those loaded after ``first`` alone."""
    names = (*HEAVY, "torch")
    script = (
        textwrap.dedent(f"""
        import json, sys
        {first}
        before = {{m: m in sys.modules for m in {names!r}}}
    """)
        + textwrap.dedent(code)
        + textwrap.dedent(f"""
        print(json.dumps({{**{{m: m in sys.modules for m in {names!r}}}, "before": before}}))
    """)
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def test_the_loss_and_online_weights_import_torch_and_numpy_only():
    # one interpreter imports them in turn (each a few s of torch start-up on its own): a
    # heavy module shows first after the import that brought it in
    lean = ("npa_precompute.names", "npa_train.weights", "npa_train.online", "npa_train.loss")
    script = "import json, sys\nsteps = {}\n" + "".join(
        f"import {m}\nsteps[{m!r}] = [h for h in {HEAVY!r} if h in sys.modules]\n" for m in lean
    )
    out = subprocess.run([sys.executable, "-c", script + "print(json.dumps(steps))"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout  # fmt: skip
    steps = json.loads(out.strip().splitlines()[-1])
    assert list(steps) == list(lean)
    assert all(not heavy for heavy in steps.values()), steps


@pytest.mark.parametrize(
    ("adapter", "framework"),
    [("smp", None), ("lightning", "lightning"), ("torchgeo", "torchgeo.trainers"),
     ("mmseg", "mmseg.registry")],
)  # fmt: skip
def test_adapters_add_no_heavy_module(adapter, framework):
    if framework is not None:
        pytest.importorskip(framework.split(".")[0])
    # what the framework itself loads (torchgeo loads click through rasterio) is not ours:
    # one interpreter imports the framework, notes what is loaded, then imports the adapter
    after = _loaded(f"import npa_train.adapters.{adapter}", first=f"import {framework or 'torch'}")
    added = [m for m in HEAVY if after[m] and not after["before"][m]]
    assert not added and not after["numba"] and not after["zarr"], after


def test_config_and_precompute_help_load_no_torch_nor_numba():
    loaded = _loaded("""
        from npa_train.config import TrainConfig
        TrainConfig(store="s.zarr", out="run", weights="online:k32_log10_L0.5")
    """)
    assert not loaded["torch"] and not loaded["numba"], loaded
    loaded = _loaded("""
        import sys
        from npa_precompute.cli import main
        try:
            main(["run", "--help"])
        except SystemExit:
            pass
    """)
    assert not loaded["numba"] and not loaded["torch"] and not loaded["zarr"], loaded
