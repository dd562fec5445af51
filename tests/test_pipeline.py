"""npa-precompute run end to end: CLI round trips read back, re-runs, crashes, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import (
    brute_force_affinity,
    brute_force_at,
    sample_points,
    write_image,
    write_isprs_tile,
)
from PIL import Image

from npa_precompute import imagestats, pipeline
from npa_precompute.cli import main
from npa_precompute.presets import get_preset
from npa_precompute.readers import InputError
from npa_precompute.store import (
    IncompleteTileError,
    StoreError,
    list_tiles,
    open_store,
    open_tile,
    store_info,
)
from npa_precompute.transforms import parse_transform

TRANSFORMS = ["log10:L=0.5", "ln:L=0.5", "norm:L=0.5"]


def _blocky(shape, seed, n=6, block=6):
    rng = np.random.default_rng(seed)
    b = rng.integers(0, n, (shape[0] // block + 1, shape[1] // block + 1))
    return np.kron(b, np.ones((block, block), dtype=int))[: shape[0], : shape[1]]


@pytest.fixture
def isprs_tiles(tmp_path):
    """Three small ISPRS-style tiles (RGB-coded eroded labels + IRRG images)."""
    gt, top = tmp_path / "gts_eroded", tmp_path / "top"
    truth = {}
    for i, shape in enumerate([(40, 52), (33, 30), (64, 20)]):
        idx = _blocky(shape, i)
        ignore = np.zeros(shape, bool)
        ignore[::7, ::5] = True
        write_isprs_tile(gt, f"area{i}_noBoundary.tif", idx, ignore_mask=ignore)
        image = (idx[..., None] * np.array([40, 20, 10]) + 5).astype(np.uint8)
        write_image(top, f"area{i}.tif", image)
        truth[f"area{i}"] = (np.where(ignore, 255, idx), image)
    return gt, top, truth


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def _check_tile(tile, labels, ks, transforms, *, full_brute=True):
    np.testing.assert_array_equal(tile.label[...], labels)
    ignore = labels == 255
    for k in ks:
        aff = tile.affinity(k)[...]
        if full_brute:
            np.testing.assert_array_equal(aff, brute_force_affinity(labels, k))
        else:
            pts = sample_points(labels.shape, n=300, seed=k)
            ys, xs = np.array(pts).T
            np.testing.assert_array_equal(aff[ys, xs], brute_force_at(labels, k, pts))
        for spec in transforms:
            t = parse_transform(spec)
            w = tile.weights(f"k{k}_{t.slug}")
            assert w.attrs["k"] == k and w.attrs["transform"] == t.spec
            a = aff.astype(np.float64)
            if t.kind == "norm":
                v = a[~ignore]
                ref = (a - v.min()) / (v.max() - v.min()) + t.L
            else:
                ref = np.log(a + t.a**t.L) / np.log(t.a)
            ref[ignore] = 0
            np.testing.assert_allclose(w[...], ref, rtol=2e-6, atol=1e-6)


def test_cli_roundtrip_reads_store_back(isprs_tiles, tmp_path):
    gt, top, truth = isprs_tiles
    out = tmp_path / "store.zarr"
    args = ["run", str(gt), "--images", str(top), "--out", str(out), "--k", "1,4,9", "-q"]
    for t in TRANSFORMS:
        args += ["--transform", t]
    res = _run(args)
    assert res.exit_code == 0, res.output
    assert "3 tile(s) written, 0 up to date" in res.output
    root = open_store(out)
    info = store_info(root).to_dict()  # the attrs as written
    assert info["preset"] == "isprs" and info["ignore_index"] == 255
    assert info["classes"][4] == "car" and info["palette"][4] == [255, 255, 0]
    assert list_tiles(root) == ["area0", "area1", "area2"]
    for tid, (labels, image) in truth.items():
        tile = open_tile(root, tid)
        np.testing.assert_array_equal(tile.image[...], image)
        assert tile.label.fill_value == 255
        assert tile.label.metadata.dimension_names == ("y", "x")
        assert tile.image.metadata.dimension_names == ("y", "x", "band")
        assert tile.attrs["source"]["label_sha256"]
        np.testing.assert_allclose(tile.attrs["image_mean"], image.reshape(-1, 3).mean(0))
        _check_tile(tile, labels, [1, 4, 9], TRANSFORMS)
    # a re-run with the same inputs and parameters skips every tile
    res = _run(args)
    assert "0 tile(s) written, 3 up to date and skipped" in res.output


def test_python_dash_m_entry_point(isprs_tiles, tmp_path):
    import subprocess
    import sys

    gt, top, _ = isprs_tiles
    proc = subprocess.run(
        [sys.executable, "-m", "npa_precompute", "run", str(gt), "--out", str(tmp_path / "s"),
         "--k", "2", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "3 tile(s) written" in proc.stdout


def test_changed_label_or_params_recompute_only_what_changed(isprs_tiles, tmp_path):
    gt, top, truth = isprs_tiles
    out = tmp_path / "s.zarr"
    s1 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2])
    assert s1.written == ["area0", "area1", "area2"]
    idx = _blocky((33, 30), 99)
    write_isprs_tile(gt, "area1_noBoundary.tif", idx)
    s2 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2])
    assert s2.written == ["area1"] and s2.skipped == ["area0", "area2"]
    np.testing.assert_array_equal(open_tile(open_store(out), "area1").label[...], idx)
    # another dtype would replace stored arrays: refused without --overwrite
    with pytest.raises(StoreError, match=r"3 complete tile\(s\) .* other parameters .*--overwrite"):
        pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 3],
                                weight_dtype="float16")  # fmt: skip
    assert open_tile(open_store(out), "area0").affinity_ks == [2]
    # the refused run wrote nothing: the consolidated listing (xarray, napari) is intact
    meta = json.loads((out / "zarr.json").read_text())
    assert "tiles/area0/affinity/k2" in meta["consolidated_metadata"]["metadata"]
    # more k: the tiles grow in place (tests/test_derived.py checks the arrays)
    s3 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 3])
    assert s3.grown == ["area0", "area1", "area2"] and s3.written == []
    assert open_tile(open_store(out), "area0").affinity_ks == [2, 3]
    s4 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[3])
    assert s4.skipped == ["area0", "area1", "area2"]  # a subset of what the tiles hold
    s4 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 3], overwrite=True)
    assert s4.written == ["area0", "area1", "area2"]
    assert open_tile(open_store(out), "area0").affinity_ks == [2, 3]
    s5 = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 3], overwrite=True)
    assert s5.written == ["area0", "area1", "area2"]  # --overwrite recomputes current tiles


def test_interrupted_run_is_completed_and_finished_tiles_untouched(isprs_tiles, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    gt, top, truth = isprs_tiles
    out = tmp_path / "s.zarr"
    real = pipeline.write_tile
    calls = {"n": 0}

    def crash_in_second_tile(root, tile_id, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            weights = kw["weights"]

            def partial():
                yield next(iter(weights))
                raise KeyboardInterrupt("killed")  # the process dies mid-tile

            kw["weights"] = partial()
        return real(root, tile_id, **kw)

    monkeypatch.setattr(pipeline, "write_tile", crash_in_second_tile)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 5],
                                transforms=TRANSFORMS)  # fmt: skip
    root = open_store(out)
    assert list_tiles(root) == ["area0", "area1"]
    assert list_tiles(root, complete_only=True) == ["area0"]
    with pytest.raises(IncompleteTileError, match="area1.*incomplete"):
        open_tile(root, "area1")
    done = out / "tiles" / "area0"
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    monkeypatch.setattr(pipeline, "write_tile", real)
    s = pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[2, 5],
                                transforms=TRANSFORMS)  # fmt: skip
    assert s.written == ["area1", "area2"] and s.skipped == ["area0"]
    after = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    assert before == after  # nothing finished earlier was rewritten
    root = open_store(out)
    for tid, (labels, _) in truth.items():
        _check_tile(open_tile(root, tid), labels, [2, 5], TRANSFORMS)


def test_two_workers_equal_one_worker(isprs_tiles, tmp_path):
    gt, top, truth = isprs_tiles
    a = pipeline.run_precompute([str(gt)], tmp_path / "a", images=[str(top)], ks=[3], workers=1)
    b = pipeline.run_precompute([str(gt)], tmp_path / "b", images=[str(top)], ks=[3], workers=2)
    assert a.written == b.written
    ra, rb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    for tid in truth:
        ta, tb = open_tile(ra, tid), open_tile(rb, tid)
        np.testing.assert_array_equal(ta.affinity(3)[...], tb.affinity(3)[...])
        np.testing.assert_array_equal(ta.weights("k3_log10_L0.5")[...],
                                      tb.weights("k3_log10_L0.5")[...])  # fmt: skip


def test_chunks_are_bounded_and_float16_option(isprs_tiles, tmp_path):
    gt, top, _ = isprs_tiles
    out = tmp_path / "s"
    pipeline.run_precompute([str(gt)], out, ks=[1], chunk=16, weight_dtype="float16")
    tile = open_tile(open_store(out), "area2")
    w = tile.weights("k1_log10_L0.5")
    assert w.dtype == np.float16 and w.chunks == (16, 16)
    assert tile.image is None


def test_size_mismatch_names_both_shapes(tmp_path):
    write_isprs_tile(tmp_path / "gt", "a.tif", np.zeros((10, 12), int))
    write_image(tmp_path / "top", "a.tif", np.zeros((10, 11, 3), np.uint8))
    with pytest.raises(InputError, match=r"shape \(10, 11\) but label .* shape \(10, 12\)"):
        pipeline.run_precompute([str(tmp_path / "gt")], tmp_path / "s",
                                images=[str(tmp_path / "top")], ks=[1])  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "-1"], "Invalid value for '--k': must be >= 0, got -1"),
        (["--transform", "sqrt"], "Invalid value for '--transform': unknown transform 'sqrt'"),
        (["--transform", "norm:L=-1"], "'--transform': `L` must be >= 0"),
        (["--transform", "log:a=1,L=0.5"], "'--transform': `a` must be > 1"),
        (["--preset", "index"], "Invalid value for '--num-classes': must be given with preset"),
        (["--workers", "0"], "Invalid value for '--workers': must be an integer >= 1"),
    ],
)
def test_cli_bad_arguments_named(isprs_tiles, tmp_path, extra, message):
    gt, _, _ = isprs_tiles
    res = _run(["run", str(gt), "--out", str(tmp_path / "s"), "-q", *extra])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "s").exists()  # checked before anything is written


def test_cli_unknown_colours_and_ignore_option(tmp_path):
    idx = np.zeros((6, 6), int)
    path = write_isprs_tile(tmp_path / "gt", "a.png", idx)
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, 0] = (254, 254, 254)
    Image.fromarray(rgb).save(path)
    res = _run(["run", str(path), "--out", str(tmp_path / "s"), "--k", "1", "-q"])
    assert res.exit_code != 0 and "(254, 254, 254): 1 px" in res.output
    res = _run(["run", str(path), "--out", str(tmp_path / "s"), "--k", "1", "-q",
                "--unknown-colors", "ignore"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert open_tile(open_store(tmp_path / "s"), "a").label[0, 0] == 255


def test_store_with_other_settings_refused(isprs_tiles, tmp_path):
    gt, _, _ = isprs_tiles
    out = tmp_path / "s"
    pipeline.run_precompute([str(gt)], out, ks=[1])
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(idx_dir / "t.png")
    with pytest.raises(StoreError, match="other settings.*--overwrite"):
        pipeline.run_precompute([str(idx_dir)], out, preset="index", num_classes=3, ks=[1])
    s = pipeline.run_precompute([str(idx_dir)], out, preset="index", num_classes=3, ks=[1],
                                overwrite=True)  # fmt: skip
    assert s.written == ["t"] and list_tiles(open_store(out)) == ["t"]
    with pytest.raises(StoreError, match="no tile 'area0'.*tiles: t"):
        open_tile(open_store(out), "area0")


def test_index_preset_with_palette_png_and_ignore(tmp_path):
    labels = np.array([[0, 1, 2, 255], [2, 2, 1, 0]], np.uint8)
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0] * 256)
    (tmp_path / "gt").mkdir()
    im.save(tmp_path / "gt" / "tile_label.png")
    out = tmp_path / "s"
    pipeline.run_precompute([str(tmp_path / "gt")], out, preset="index", num_classes=3, ks=[1])
    tile = open_tile(open_store(out), "tile")
    np.testing.assert_array_equal(tile.label[...], labels)
    np.testing.assert_array_equal(tile.affinity(1)[...], brute_force_affinity(labels, 1))
    assert tile.weights("k1_log10_L0.5")[0, 3] == 0  # ignore pixel


def test_real_vaihingen_and_loveda_stores(shared_data, tmp_path):
    ks = [8, 16, 32, 64]
    v = shared_data / "vaihingen_crop"
    out_v = tmp_path / "vaihingen.zarr"
    args = ["run", str(v / "gts_eroded_for_participants"), "--images", str(v / "top"),
            "--out", str(out_v), "--preset", "isprs", "--k", "8,16,32,64", "-q"]  # fmt: skip
    for t in TRANSFORMS:
        args += ["--transform", t]
    res = _run(args)
    assert res.exit_code == 0, res.output
    root = open_store(out_v)
    tile = open_tile(root, "top_mosaic_09cm_area1")
    raw = np.asarray(
        Image.open(v / "gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif")
    )
    labels = get_preset("isprs").decode(raw)
    assert tile.image.shape == (512, 512, 3)
    _check_tile(tile, labels, ks, TRANSFORMS, full_brute=False)
    np.testing.assert_array_equal(tile.affinity(8)[...], brute_force_affinity(labels, 8))

    lov = shared_data / "loveda_crop/Train/Rural"
    out_l = tmp_path / "loveda.zarr"
    res = _run(["run", str(lov / "masks_png"), "--images", str(lov / "images_png"), "--out",
                str(out_l), "--preset", "loveda", "--k", "8,16,32,64", "-q", "--workers", "2",
                *[a for t in TRANSFORMS for a in ("--transform", t)]])  # fmt: skip
    assert res.exit_code == 0, res.output
    root = open_store(out_l)
    info = store_info(root).to_dict()
    assert info["label_remap"]["0"] == 255 and info["classes"][0] == "background"
    attrs = json.loads((out_l / "zarr.json").read_text())["attributes"]["npaloss"]
    assert attrs["preset"] == "loveda"
    for i in (0, 1):
        tile = open_tile(root, f"Train_Rural_{i}")
        raw = np.asarray(Image.open(lov / f"masks_png/{i}.png"))
        labels = get_preset("loveda").decode(raw)
        assert (tile.label[...] == 255).sum() == (raw == 0).sum()
        _check_tile(tile, labels, ks, TRANSFORMS, full_brute=False)


def test_store_arrays_open_with_plain_zarr(isprs_tiles, tmp_path):
    gt, top, truth = isprs_tiles
    out = tmp_path / "s"
    pipeline.run_precompute([str(gt)], out, images=[str(top)], ks=[4])
    g = zarr.open_group(out, mode="r")
    w = g["tiles/area0/weights/k4_log10_L0.5"]
    assert w.metadata.dimension_names == ("y", "x") and w.attrs["k"] == 4
    assert g["tiles/area0"].attrs["complete"] is True


def test_killed_process_then_rerun_completes_store(tmp_path):
    """SIGKILL a real `npa-precompute run` once a tile is complete; the re-run finishes."""
    import signal
    import subprocess
    import sys
    import time

    gt = tmp_path / "gt"
    for i in range(10):
        write_isprs_tile(gt, f"t{i:02d}.tif", _blocky((384, 384), 100 + i))
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "npa_precompute", "run", str(gt), "--out", str(out),
           "--k", "8,16,32,64", "--transform", "log10:L=0.5", "--transform", "norm:L=0.5",
           "--transform", "ln:L=0.5", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed_midway = False
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "zarr.json").exists():
            done = list_tiles(open_store(out), complete_only=True)
            if done:
                proc.send_signal(signal.SIGKILL)
                killed_midway = len(done) < 10
                break
        time.sleep(0.02)
    proc.wait()
    root = open_store(out)
    complete = list_tiles(root, complete_only=True)
    assert complete, "no tile was complete when the process was killed"
    stamps = {p: p.stat().st_mtime_ns for t in complete for p in (out / "tiles" / t).rglob("*")}
    s = pipeline.run_precompute([str(gt)], out, ks=[8, 16, 32, 64],
                                transforms=["log10:L=0.5", "norm:L=0.5", "ln:L=0.5"])  # fmt: skip
    assert sorted(s.skipped) == complete
    assert len(s.written) == 10 - len(complete)
    assert killed_midway == bool(s.written)
    for p, t in stamps.items():
        assert p.stat().st_mtime_ns == t  # finished tiles were not rewritten
    root = open_store(out)
    assert list_tiles(root, complete_only=True) == [f"t{i:02d}" for i in range(10)]
    labels = _blocky((384, 384), 105)
    tile = open_tile(root, "t05")
    np.testing.assert_array_equal(tile.label[...], labels)
    pts = sample_points(labels.shape, n=200)
    ys, xs = np.array(pts).T
    np.testing.assert_array_equal(tile.affinity(64)[...][ys, xs], brute_force_at(labels, 64, pts))


def test_image_stats_match_numpy():
    rng = np.random.default_rng(4)
    for dtype in (np.uint8, np.uint16):
        image = rng.integers(0, np.iinfo(dtype).max, (37, 41, 4), endpoint=True).astype(dtype)
        stats = imagestats.image_stats(image)
        flat = image.reshape(-1, 4).astype(np.float64)
        np.testing.assert_allclose(stats["image_mean"], flat.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats["image_std"], flat.std(0), rtol=1e-9)


def test_out_that_is_a_file_is_refused(isprs_tiles, tmp_path):
    gt, _, _ = isprs_tiles
    target = tmp_path / "afile"
    target.write_text("not a store")
    res = _run(["run", str(gt), "--out", str(target), "--k", "1", "-q"])
    assert res.exit_code != 0 and "is a file, not a store folder" in res.output
    assert "Traceback" not in res.output and target.read_text() == "not a store"


def test_sigterm_stops_run_and_workers(tmp_path):
    """SIGTERM to `npa-precompute run --workers 2` ends it and its workers; re-run completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # enough tiles that the run is still writing when the signal lands, also on a fast,
    # idle machine (8 tiles were sometimes all written first)
    n = 32
    gt = tmp_path / "gt"
    for i in range(n):
        write_isprs_tile(gt, f"t{i}.tif", _blocky((512, 512), 200 + i))
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "npa_precompute", "run", str(gt), "--out", str(out),
           "--k", "8,16,32,64", "--transform", "log10:L=0.5", "--transform", "ln:L=0.5",
           "--workers", "2", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "tiles").is_dir() and any((out / "tiles").iterdir()):
            break
        time.sleep(0.02)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)  # returns: no orphan keeps the pipes open
    assert proc.returncode != 0 and b"Traceback" not in err
    time.sleep(0.5)
    for pid in pids:  # the worker processes are gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split()[2] == "Z", f"worker {pid} outlived the run"
    s = pipeline.run_precompute([str(gt)], out, ks=[8, 16, 32, 64],
                                transforms=["log10:L=0.5", "ln:L=0.5"])  # fmt: skip
    assert sorted(s.written + s.skipped) == sorted(f"t{i}" for i in range(n))
    assert list_tiles(open_store(out), complete_only=True) == sorted(f"t{i}" for i in range(n))


def test_precompute_config_checks_itself():
    """Made anywhere (not only by run_precompute), a PrecomputeConfig holds valid values."""
    from npa_precompute.errors import ParameterError
    from npa_precompute.transforms import WeightRangeError

    isprs = get_preset("isprs")
    cfg = pipeline.PrecomputeConfig(isprs, "8,16", ["log10:L=0.5", "log10:L=0.5", "raw"])
    assert cfg.ks == (8, 16)
    assert [t.spec for t in cfg.transforms] == ["log10:L=0.5", "raw"]
    cases = [
        ({"ks": "8,x"}, "k"),
        ({"transforms": ()}, "transforms"),
        ({"transforms": ("log10:L=x",)}, "transforms"),
        ({"weight_dtype": "float64"}, "weight_dtype"),
        ({"unknown_colors": "skip"}, "unknown_colors"),
        ({"chunk": 8}, "chunk"),
        ({"chunk": True}, "chunk"),
    ]
    for kw, param in cases:
        with pytest.raises(ParameterError) as info:
            pipeline.PrecomputeConfig(isprs, **kw)
        assert info.value.param == param, kw
    with pytest.raises(WeightRangeError, match="raw"):
        pipeline.PrecomputeConfig(isprs, (128,), ("raw",), "float16")
    with pytest.raises(ParameterError, match="chunk"):  # a grow's union is checked too
        replace(cfg, chunk=4)
