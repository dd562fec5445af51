"""Blockwise precompute (``--dask``): bit-identical to the in-memory path, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from helpers import ROOT, SHARED_DATA, write_isprs_tile

from npa_precompute.blockwise import DaskOptions, block_grid
from npa_precompute.cli import main
from npa_precompute.pipeline import run_precompute
from npa_precompute.readers import InputError, Raster
from npa_precompute.store import list_tiles, open_store, open_tile

sys.path.insert(0, str(ROOT))
from benchmarks._common import mirror_tile, write_mirror_tiff

LABEL = "gts_eroded_for_participants/top_mosaic_09cm_area1_noBoundary.tif"
IMAGE = "top/top_mosaic_09cm_area1.tif"
GEOREF_SRC = {"crs": "EPSG:32632", "transform": [0.09, 0.0, 496000.0, 0.0, -0.09, 5420000.0]}
KS = (8, 64)
TRANSFORMS = ("log10:L=0.5", "norm:L=0.5")


def _georef() -> dict:
    """A UTM 32N georeferencing as read back from a GeoTIFF written with rasterio."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    from npa_precompute.geo import read_georef

    path = ROOT / ".pytest_cache" / "georef_probe.tif"
    path.parent.mkdir(exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8",
        crs="EPSG:32632", transform=Affine(*GEOREF_SRC["transform"]),
    ) as ds:  # fmt: skip
        ds.write(np.zeros((1, 4, 4), np.uint8))
    return read_georef(path)


def _arrays(tile) -> dict[str, np.ndarray]:
    names = ["label", "image"] + [f"affinity/k{k}" for k in tile.affinity_ks]
    names += [f"weights/{n}" for n in tile.weight_names]
    return {n: tile.group[n][...] for n in names if n.split("/")[0] in tile.group}


def assert_same_tile(mem_store, bw_store, tile_id="area1") -> None:
    a = open_tile(open_store(mem_store), tile_id)
    b = open_tile(open_store(bw_store), tile_id)
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, x in arrays_a.items():
        y = arrays_b[name]
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y), f"{name}: {int((x != y).sum())} pixels differ"
    attrs_b = dict(b.attrs)
    assert attrs_b.pop("blockwise")["halo"] == max(a.attrs["params"]["ks"])
    assert dict(a.attrs) == attrs_b


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 1100 x 1500 tiled GeoTIFF label (+ image) mirror-tiled from the real Vaihingen crop,
    and its in-memory store as the reference."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data crops not found at {SHARED_DATA}")
    d = tmp_path_factory.mktemp("mosaic")
    (d / "gts").mkdir()
    (d / "top").mkdir()
    georef = _georef()
    label = write_mirror_tiff(
        d / "gts" / "area1.tif", tifffile.imread(SHARED_DATA / "vaihingen_crop" / LABEL),
        (1100, 1500), georef=georef,
    )  # fmt: skip
    image = write_mirror_tiff(
        d / "top" / "area1.tif", tifffile.imread(SHARED_DATA / "vaihingen_crop" / IMAGE),
        (1100, 1500), georef=georef,
    )  # fmt: skip
    kw = {"images": [str(image)], "ks": KS, "transforms": TRANSFORMS}
    run_precompute([str(label)], d / "mem.zarr", **kw)
    return {"dir": d, "label": label, "image": image, "georef": georef, "kw": kw}


def test_mosaic_is_a_tiled_geotiff_read_by_windows(mosaic):
    r = Raster(mosaic["label"])
    assert r.shape == (1100, 1500, 3)
    with tifffile.TiffFile(mosaic["label"]) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].tilelength == 256
    src = tifffile.imread(SHARED_DATA / "vaihingen_crop" / LABEL)
    win = r.read(slice(1000, 1100), slice(1450, 1500))
    assert np.array_equal(win, mirror_tile(src, (1100, 1500))[1000:, 1450:])


def test_blockwise_512_equals_in_memory_everywhere(mosaic):
    out = mosaic["dir"] / "bw512.zarr"
    opts = DaskOptions(block=512, scheduler="synchronous")
    summary = run_precompute([str(mosaic["label"])], out, dask=opts, **mosaic["kw"])
    assert summary.written == ["area1"] and summary.pixels == 1_650_000
    assert_same_tile(mosaic["dir"] / "mem.zarr", out)
    tile = open_tile(open_store(out), "area1")
    assert tile.attrs["georef"] == mosaic["georef"]
    assert tile.attrs["georef"]["crs"] == "EPSG:32632"
    # each block's task wrote whole shards of its own: shards are the 512-pixel blocks
    assert tile.label.shards == (512, 512) and tile.label.chunks == (256, 256)
    # raster borders and every seam (rows/columns next to a block edge) hold real weights
    w = tile.weights("k64_log10_L0.5")[...]
    assert (w[tile.label[...] != 255] >= 0.5).all()


def test_blockwise_cli_on_local_cluster_equals_in_memory(mosaic):
    out = mosaic["dir"] / "bw_cli.zarr"
    res = CliRunner().invoke(
        main,
        ["run", str(mosaic["label"]), "--images", str(mosaic["image"]), "--out", str(out),
         "--k", "8,64", "--transform", TRANSFORMS[0], "--transform", TRANSFORMS[1],
         "--dask", "--block", "1024", "--workers", "2", "--memory-limit", "1GB", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 tile(s) written" in res.output and "1.65 Mpix" in res.output
    assert_same_tile(mosaic["dir"] / "mem.zarr", out)
    # a re-run finds the tile current and skips it
    res = CliRunner().invoke(
        main,
        ["run", str(mosaic["label"]), "--images", str(mosaic["image"]), "--out", str(out),
         "--k", "8,64", "--transform", TRANSFORMS[0], "--transform", TRANSFORMS[1],
         "--dask", "--scheduler", "synchronous", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "0 tile(s) written, 1 up to date" in res.output


def test_joins_an_existing_cluster_by_address(tmp_path, shared_data, monkeypatch):
    """The cluster's worker runs in another folder: a relative --out still works."""
    distributed = pytest.importorskip("distributed")
    label = write_mirror_tiff(
        tmp_path / "area1.tif", tifffile.imread(shared_data / "vaihingen_crop" / LABEL), (700, 900)
    )
    run_precompute([str(label)], tmp_path / "mem.zarr", ks=(16,))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        monkeypatch.chdir(tmp_path)
        res = CliRunner().invoke(
            main,
            ["run", "area1.tif", "--out", "bw.zarr", "--k", "16", "--dask",
             "--block", "256", "--scheduler", cluster.scheduler_address, "-q"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(
            main,
            ["run", "area1.tif", "--out", "bw.zarr", "--dask", "--workers", "2",
             "--scheduler", cluster.scheduler_address],
        )  # fmt: skip
        assert res.exit_code == 2
        assert "--workers sizes the local Dask cluster; with --scheduler tcp://" in res.output
    assert_same_tile(tmp_path / "mem.zarr", tmp_path / "bw.zarr")
    assert not (tmp_path / "elsewhere" / "bw.zarr").exists()


def test_a_port_that_is_not_a_dask_scheduler_fails_in_time(tmp_path, monkeypatch):
    """A server that accepts connections and never answers (like a wrong port)."""
    import socket
    import time

    monkeypatch.setattr("npa_precompute.blockwise.CONNECT_TIMEOUT", "1s")
    path = write_isprs_tile(tmp_path, "area1.tif", np.zeros((64, 64), int))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        t0 = time.monotonic()
        res = CliRunner().invoke(
            main,
            ["run", str(path), "--out", str(tmp_path / "s"), "--dask", "--block", "256",
             "--scheduler", f"tcp://127.0.0.1:{port}"],
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    assert res.exit_code == 1, res.output
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in res.output
    assert "Traceback" not in res.output
    assert elapsed < 15
    assert not (tmp_path / "s").exists()  # the store this run created is removed again


def test_memory_limit_is_checked_before_anything_is_written(tmp_path):
    path = write_isprs_tile(tmp_path, "area1.tif", np.zeros((64, 64), int))
    out = tmp_path / "s.zarr"
    for value, message in [
        ("lots", "'--memory-limit': must be a positive size such as '2GB'"),
        ("150%", "'--memory-limit': must be a positive size"),
        ("-1", "'--memory-limit': must be a positive size"),
    ]:
        res = CliRunner().invoke(
            main, ["run", str(path), "--out", str(out), "--dask", "--memory-limit", value]
        )
        assert res.exit_code == 2 and message in res.output, res.output
    with pytest.raises(ValueError, match=r"`memory_limit` 300MB is too low for 2048-pixel "
                       r"blocks with k up to 64: a worker needs about \d+ MB"):  # fmt: skip
        run_precompute([str(path)], out, dask=DaskOptions(memory_limit="300MB"))
    res = CliRunner().invoke(
        main, ["run", str(path), "--out", str(out), "--dask", "--block", "1000"]
    )
    assert res.exit_code == 2 and "--block (1000) must be a multiple of --chunk (256)" in res.output
    assert not out.exists()  # refused before the store was created


def test_dask_only_options_without_dask_are_refused(tmp_path):
    path = write_isprs_tile(tmp_path, "area1.tif", np.zeros((64, 64), int))
    res = CliRunner().invoke(
        main,
        ["run", str(path), "--out", str(tmp_path / "s"), "--dask", "--scheduler", "synchronous",
         "--workers", "2"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "--workers sizes the local Dask cluster; with --scheduler synchronous the blocks" in (
        res.output
    )
    res = CliRunner().invoke(
        main, ["run", str(path), "--out", str(tmp_path / "s"), "--block", "512"]
    )
    assert res.exit_code == 2 and "--block applies only with --dask" in res.output


def test_png_label_is_read_whole_with_a_warning(tmp_path):
    rng = np.random.default_rng(1)
    index = np.repeat(np.repeat(rng.integers(0, 6, (8, 10)), 12, 0), 12, 1)  # 96 x 120
    png = write_isprs_tile(tmp_path / "png", "area1.png", index)
    tif = write_isprs_tile(tmp_path / "tif", "area1.tif", index)
    assert not Raster(png).windowed
    res = CliRunner().invoke(
        main, ["run", str(png), "--out", str(tmp_path / "bw.zarr"), "--k", "4,40", "--chunk", "16",
               "--dask", "--block", "32", "--scheduler", "synchronous", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Warning: " in res.output and "area1.png has no windowed reads" in res.output
    run_precompute([str(tif)], tmp_path / "mem.zarr", ks=(4, 40), chunk=16)
    a = open_tile(open_store(tmp_path / "mem.zarr"), "area1")
    b = open_tile(open_store(tmp_path / "bw.zarr"), "area1")
    for k in (4, 40):
        assert np.array_equal(a.affinity(k)[...], b.affinity(k)[...])


@pytest.mark.parametrize("block, chunk", [(48, 16), (32, 32)])
def test_blocks_smaller_than_k_max(tmp_path, block, chunk):
    """Halo (k = 64, 130) larger than the block, k beyond the raster (2k + 1 > 210) with
    uint32 counts (k > 127)."""
    rng = np.random.default_rng(3)
    index = np.repeat(np.repeat(rng.integers(0, 6, (15, 21)), 10, 0), 10, 1)  # 150 x 210
    index[rng.random(index.shape) < 0.01] = 4  # isolated "cars"
    ignore = np.zeros(index.shape, bool)
    ignore[100:103, :] = True
    path = write_isprs_tile(tmp_path / "gts", "area1.tif", index, ignore_mask=ignore)
    kw = {"ks": (1, 64, 130), "transforms": ("raw", "norm:L=0", "ln:L=0.5"), "chunk": chunk}
    run_precompute([str(path)], tmp_path / "mem.zarr", **kw)
    opts = DaskOptions(block=block, scheduler="synchronous")
    run_precompute([str(path)], tmp_path / "bw.zarr", dask=opts, **kw)
    assert_same_tile(tmp_path / "mem.zarr", tmp_path / "bw.zarr")
    assert open_tile(open_store(tmp_path / "bw.zarr"), "area1").affinity(130).dtype == np.uint32
    assert len(block_grid((150, 210), block)) == -(-150 // block) * -(-210 // block)


def test_block_must_be_a_multiple_of_chunk(tmp_path):
    path = write_isprs_tile(tmp_path, "area1.tif", np.zeros((64, 64), int))
    res = CliRunner().invoke(
        main, ["run", str(path), "--out", str(tmp_path / "s"), "--dask", "--block", "300"]
    )
    assert res.exit_code == 2
    assert "--block (300) must be a multiple of --chunk (256)" in res.output
    with pytest.raises(ValueError, match=r"`block` \(300\) must be a multiple of `chunk`"):
        run_precompute([str(path)], tmp_path / "s", dask=DaskOptions(block=300))
    res = CliRunner().invoke(
        main, ["run", str(path), "--out", str(tmp_path / "s"), "--dask", "--block", "8"]
    )
    assert res.exit_code == 2 and "Invalid value for '--block': 8 is not in the range x>=16" in (
        res.output
    )
    with pytest.raises(ValueError, match="`block` must be an integer >= 16, got 8"):
        DaskOptions(block=8)
    res = CliRunner().invoke(
        main, ["run", str(path), "--out", str(tmp_path / "s"), "--scheduler", "tcp://x:1"]
    )
    assert res.exit_code == 2 and "--scheduler applies only with --dask" in res.output


@pytest.mark.parametrize("dask", [True, False], ids=["dask", "in-memory"])
def test_bad_block_content_names_file_and_window_and_leaves_no_tile(tmp_path, dask):
    """A label error leaves nothing of its tile, with --dask as in memory: a fresh store is
    removed, an existing store keeps its complete tiles and gets no empty incomplete one."""
    index = np.zeros((200, 300), int)
    path = write_isprs_tile(tmp_path / "gt", "area1.tif", index)
    rgb = tifffile.imread(path)
    rgb[150, 250] = (12, 34, 56)
    tifffile.imwrite(path, rgb, tile=(64, 64))
    good = write_isprs_tile(tmp_path / "gt", "area0.tif", index)
    kw = {"ks": (4,), "chunk": 64}
    if dask:
        kw["dask"] = DaskOptions(block=64, scheduler="synchronous")
    where = r" \(rows \d+:\d+, columns \d+:\d+\)" if dask else ""
    with pytest.raises(InputError, match=rf"area1\.tif{where}.*\(12, 34, 56\): 1 px"):
        run_precompute([str(path)], tmp_path / "s.zarr", **kw)
    assert not (tmp_path / "s.zarr").exists()  # a fresh store is removed, as in memory
    run_precompute([str(good)], tmp_path / "s.zarr", **kw)
    with pytest.raises(InputError, match=r"area1\.tif"):
        run_precompute([str(path), str(good)], tmp_path / "s.zarr", **kw)
    root = open_store(tmp_path / "s.zarr")
    assert list_tiles(root) == ["area0"] == list_tiles(root, complete_only=True)
    assert not (tmp_path / "s.zarr" / "tiles" / "area1").exists()


def test_unreachable_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("npa_precompute.blockwise.CONNECT_TIMEOUT", "2s")
    path = write_isprs_tile(tmp_path, "area1.tif", np.zeros((64, 64), int))
    res = CliRunner().invoke(
        main,
        ["run", str(path), "--out", str(tmp_path / "s"), "--dask", "--block", "256",
         "--scheduler", "tcp://127.0.0.1:9"],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in res.output


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    import tifffile
    from benchmarks._common import write_mirror_tiff
    from npa_precompute.blockwise import DaskOptions
    from npa_precompute.pipeline import run_precompute

    d = Path({tmp!r})
    src = tifffile.imread({label!r})
    opts = DaskOptions(block=512, scheduler="synchronous")
    small = write_mirror_tiff(d / "small.tif", src, (600, 600))
    run_precompute([str(small)], d / "warm.zarr", ks=(8, 64), dask=opts)  # imports, JIT
    big = write_mirror_tiff(d / "big.tif", src, ({n}, {n}))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_precompute([str(big)], d / "big.zarr", ks=(8, 64), dask=opts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"base_kib": base, "peak_kib": peak}}))
    """
)


def test_blockwise_peak_memory_stays_bounded(tmp_path, shared_data):
    """A 3072^2 raster: the in-memory path holds 144 MiB of arrays alone (RGB label, label,
    two count maps, two weight maps); the blockwise path's peak grows by a few 512-pixel
    blocks only (6 MiB measured at 5120^2, where the arrays are 400 MiB)."""
    n = 3072
    code = _MEMORY_PROBE.format(
        root=str(ROOT), tmp=str(tmp_path), label=str(shared_data / "vaihingen_crop" / LABEL), n=n
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    grown_mib = (r["peak_kib"] - r["base_kib"]) / 1024
    in_memory_mib = n * n * (3 + 1 + 2 * 2 + 2 * 4) / 2**20  # 144 MiB of arrays alone
    assert grown_mib < 48, r
    assert grown_mib < in_memory_mib / 3


def test_training_reader_reads_block_sharded_arrays(tmp_path):
    """The direct shard reader handles one shard per block (not per array)."""
    from npa_precompute.shards import ShardReader

    rng = np.random.default_rng(5)
    index = np.repeat(np.repeat(rng.integers(0, 6, (14, 18)), 5, 0), 5, 1)  # 70 x 90
    path = write_isprs_tile(tmp_path / "gts", "area1.tif", index)
    opts = DaskOptions(block=32, scheduler="synchronous")
    run_precompute([str(path)], tmp_path / "s.zarr", ks=(3,), chunk=16, dask=opts)
    tile = open_tile(open_store(tmp_path / "s.zarr"), "area1")
    for arr in (tile.label, tile.weights("k3_log10_L0.5"), tile.affinity(3)):
        assert arr.shards == (32, 32)
        reader = ShardReader.create(arr)
        assert reader is not None
        full = arr[...]
        for y0, y1, x0, x1 in [(0, 70, 0, 90), (5, 41, 20, 77), (31, 33, 63, 65), (60, 70, 80, 90)]:
            assert np.array_equal(reader.read(y0, y1, x0, x1), full[y0:y1, x0:x1])
