"""The training loader on real shards (the synthetic_dataset fixture): the SPEC 4 batch, epoch
length from _info.json, determinism, worker and node splitting, and the GPU path."""

from __future__ import annotations

import pytest
import torch

import datakit
from datakit.errors import DatasetIncomplete, SampleError, UsageError
from datakit.loader import make_loader
from datakit.views import BATCH_KEYS, ViewConfig
from tests.conftest import with_bad_member, with_bad_units

SMALL = ViewConfig(size=32)


def rows(batches: list[dict], key: str = "coords1") -> list[tuple[float, ...]]:
    return sorted(tuple(r) for b in batches for r in b[key].tolist())


def test_batches_follow_spec(synthetic_dataset):
    loader = datakit.make_loader(str(synthetic_dataset), 4, views=SMALL, seed=0)
    assert len(loader) == 16 // 4  # train split of _info.json
    batches = list(loader)
    assert len(batches) == 4
    b = batches[0]
    assert tuple(b) == BATCH_KEYS  # synthetic data has labels
    for i in (1, 2):
        assert b[f"view{i}"].shape == (4, 3, 32, 32) and b[f"view{i}"].dtype == torch.float32
        assert b[f"depth{i}"].shape == (4, 1, 32, 32) and b[f"depth{i}"].dtype == torch.float32
        assert b[f"coords{i}"].shape == (4, 4) and b[f"coords{i}"].dtype == torch.float32
        assert b[f"label{i}"].shape == (4, 32, 32) and b[f"label{i}"].dtype == torch.int64
    assert b["periodic"].dtype == torch.bool and not b["periodic"].any()
    assert (b["depth1"] >= 0).all() and (b["depth1"] > 0).any()
    # Normalised with ImageNet statistics (written here, not imported): undoing them gives [0, 1].
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for i in (1, 2):
        rgb = b[f"view{i}"] * std + mean
        assert float(rgb.min()) >= -1e-4 and float(rgb.max()) <= 1 + 1e-4
        assert float(rgb.max()) > 0.5  # not all dark: the upper end of the range is exercised


def test_same_seed_same_batches_new_epoch_new_views(synthetic_dataset):
    a = list(make_loader(synthetic_dataset, 4, views=SMALL, seed=3))
    b = list(make_loader(synthetic_dataset, 4, views=SMALL, seed=3))
    for x, y in zip(a, b, strict=True):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    loader = make_loader(synthetic_dataset, 4, views=SMALL, seed=3)
    loader.set_epoch(1)
    c = list(loader)
    assert rows(a) != rows(c)


def test_workers_see_every_sample_once(synthetic_dataset):
    plain = list(make_loader(synthetic_dataset, 2, views=SMALL, shuffle=False, num_workers=0))
    split = list(make_loader(synthetic_dataset, 2, views=SMALL, shuffle=False, num_workers=2))
    # Views are seeded by (seed, epoch, key): the same samples give the same views in any worker.
    assert rows(plain) == rows(split)
    assert len(rows(plain)) == 16


def test_split_by_node(synthetic_dataset, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = make_loader(synthetic_dataset, 2, views=SMALL, resampled=False, shuffle=False)
        assert len(loader) == 16 // 2 // 2
        seen.append(rows(list(loader)))
    assert not set(seen[0]) & set(seen[1])
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert sorted(seen[0] + seen[1]) == rows(
        list(make_loader(synthetic_dataset, 2, views=SMALL, shuffle=False))
    )


def test_resampled_epoch_length_and_val_split(synthetic_dataset):
    loader = make_loader(synthetic_dataset, 3, views=SMALL, resampled=True, epoch_samples=30)
    assert len(list(loader)) == len(loader) == 10
    val = make_loader(synthetic_dataset, 4, views=SMALL, split="val", drop_last=False)
    assert sum(b["view1"].shape[0] for b in val) == 8


def test_bad_arguments(synthetic_dataset, tmp_path):
    with pytest.raises(UsageError):
        make_loader(synthetic_dataset, 0)
    with pytest.raises(UsageError):
        make_loader(synthetic_dataset, 2, split="nope")
    with pytest.raises(DatasetIncomplete):
        make_loader(tmp_path, 2)


def test_bad_member_error_names_the_shard(synthetic_dataset, tmp_path):
    shard = with_bad_member(synthetic_dataset, tmp_path / "bad", "train_000001.rgb.jpg")
    with pytest.raises(SampleError, match="image bytes do not decode") as err:
        list(make_loader(tmp_path / "bad", 4, views=ViewConfig(size=32), shuffle=False))
    assert str(shard) in str(err.value) and "train_000001.rgb.jpg" in str(err.value)
    # From a worker process torch wraps the message in the worker's traceback: one line is kept.
    with pytest.raises(SampleError) as err:
        list(make_loader(tmp_path / "bad", 4, views=ViewConfig(size=32), num_workers=1))
    assert str(err.value).startswith(str(shard)) and "\n" not in str(err.value)
    with pytest.raises(SampleError) as err:
        list(datakit.open_dataset(tmp_path / "bad"))
    assert str(shard) in str(err.value)


def gpu_batches(dataset, device: str) -> tuple[list[dict], list[dict]]:
    cfg = ViewConfig(size=32, photometric=False)
    cpu = list(make_loader(dataset, 4, views=cfg, shuffle=False))
    loader = make_loader(dataset, 4, views=cfg, shuffle=False, device="cuda", num_workers=1)
    loader.device = device  # the GPU path's kernels also run on CPU torch
    return cpu, list(loader)


def check_gpu_path(dataset, device: str) -> None:
    cpu, gpu = gpu_batches(dataset, device)
    assert len(cpu) == len(gpu)
    for c, g in zip(cpu, gpu, strict=True):
        assert tuple(g) == tuple(c)
        assert g["view1"].device.type == device
        for k in ("coords1", "coords2", "depth1", "depth2", "label1", "label2", "periodic"):
            torch.testing.assert_close(g[k].cpu(), c[k], rtol=0, atol=0)
        # JPEG decoders differ (nvJPEG vs libjpeg-turbo) by a few levels; geometry must not.
        std = torch.tensor(ViewConfig().std).view(1, 3, 1, 1) * 255
        diff = ((g["view1"].cpu() - c["view1"]) * std).abs()
        assert float(diff.mean()) < 2.0


def test_gpu_path_workers_and_kernels_on_cpu_torch(synthetic_dataset):
    check_gpu_path(synthetic_dataset, "cpu")


def test_gpu_path_checks_a_jpeg_against_the_metadata_before_decoding(synthetic_dataset, tmp_path):
    """The GPU path leaves JPEGs encoded in the workers; their size is read from the frame header
    and checked against the metadata there (the CPU path checks the decoded image), and bytes with
    no frame header are refused, both with the shard and member named on one line."""
    import cv2
    import numpy as np

    small = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))[1].tobytes()  # meta: 96x72
    cases = {"wrong_size": (small, "metadata says 96x72, image is 32x24"),
             "not_jpeg": (b"\xff\xd8garbage", "train_000001.rgb.jpg: not a JPEG (no frame header)")}  # fmt: skip
    for name, (data, message) in cases.items():
        shard = with_bad_member(synthetic_dataset, tmp_path / name, "train_000001.rgb.jpg", data)
        for workers in (0, 1):
            loader = make_loader(
                tmp_path / name, 4, views=SMALL, shuffle=False, device="cuda", num_workers=workers
            )
            loader.device = "cpu"
            with pytest.raises(SampleError) as err:
                list(loader)
            assert str(err.value).startswith(str(shard)) and "\n" not in str(err.value)
            assert message in str(err.value)


def test_gpu_path_decodes_a_grayscale_jpeg_to_three_equal_channels():
    """A one-component JPEG (not what the writer makes, but valid in a foreign shard) comes out of
    the GPU path's decode as 3 equal channels, like the CPU path's colour decode."""
    import cv2
    import numpy as np

    from datakit.gpu_views import GpuViews
    from datakit.jpeg import jpeg_header

    gray = np.random.default_rng(0).integers(0, 256, (24, 32), np.uint8)
    data = cv2.imencode(".jpg", gray)[1].tobytes()
    assert jpeg_header(data) == (32, 24, 1)
    batch = {"jpeg_sizes": torch.tensor([len(data)]),
             "jpeg_data": torch.frombuffer(bytearray(data), dtype=torch.uint8), "images": []}  # fmt: skip
    (image,) = GpuViews(SMALL, "cpu").decode(batch)
    assert image.shape == (3, 24, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    cpu = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - cpu.astype(int)).max() <= 1


def test_a_jpeg_exif_orientation_tag_leaves_rgb_as_stored_on_both_paths(
    synthetic_dataset, tmp_path
):
    """A JPEG member with an EXIF orientation tag (the writer makes none; a foreign shard may) is
    read as stored, in the pixel order of its depth and label PNGs and of the metadata's width and
    height, by both paths: OpenCV's default decode applies the tag (here a 180 degree turn), which
    turned the CPU path's RGB away from its depth and from the GPU path's nvJPEG decode."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    member = "train_000001.rgb.jpg"
    shard = sorted(synthetic_dataset.glob("train-*.tar"))[0]
    with tarfile.open(shard) as tar:
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 3  # orientation: rotate 180 degrees to display
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=100, exif=exif.tobytes())
    with_bad_member(synthetic_dataset, tmp_path / "exif", member, buf.getvalue())
    sample = next(s for s in datakit.open_dataset(tmp_path / "exif") if s.key == "train_000001")
    assert np.abs(sample.rgb.astype(int) - stored.astype(int)).mean() < 2.0
    check_gpu_path(tmp_path / "exif", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_agrees_with_cpu_path(synthetic_dataset):
    check_gpu_path(synthetic_dataset, "cuda")


def test_batch_carries_the_period_of_a_circular_x(synthetic_dataset):
    """period = W / (W - 1): the wrap of a periodic x in coords units (normalised by W - 1)."""
    batch = next(iter(datakit.make_loader(str(synthetic_dataset), 4, views=SMALL, seed=0)))
    assert batch["period"].dtype == torch.float32 and batch["period"].shape == (4,)
    assert torch.allclose(batch["period"], torch.full((4,), 96 / 95))


def test_depth_is_the_stored_code_times_depth_scale_at_the_coords(synthetic_dataset):
    """The shards read with tarfile and OpenCV (not datakit): every depth value of a batch is the
    16-bit code x depth_scale of the source pixel nearest the position its coords give (docs/views.md:
    u = x1 + (x2 - x1) c / (S - 1), in pixels u (W - 1)), 0 where that pixel is invalid; labels are
    the stored ids there. Each batch row matches exactly one source sample."""
    import json
    import tarfile

    import cv2
    import numpy as np

    sources = []
    for shard in sorted(synthetic_dataset.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for name in files:
            if name.endswith(".json"):
                key = name[: -len(".json")]
                meta = json.loads(files[name])
                code, label = (
                    cv2.imdecode(
                        np.frombuffer(files[f"{key}.{m}.png"], np.uint8), cv2.IMREAD_UNCHANGED
                    )
                    for m in ("depth", "label")
                )
                assert code.dtype == np.uint16 and (code == 0).any()
                sources.append((code.astype(np.float64) * meta["depth_scale"], label))
    size = 24
    t = np.arange(size) / (size - 1)
    eps = 1e-4  # float32 coords: either pixel at a tie
    matched = []
    for batch in make_loader(synthetic_dataset, 4, views=ViewConfig(size=size), seed=1):
        for b in range(batch["view1"].shape[0]):
            hits = []
            for i, (depth, label) in enumerate(sources):
                h, w = depth.shape
                ok = True
                for v in (1, 2):
                    x1, y1, x2, y2 = batch[f"coords{v}"][b].double().numpy()
                    u, vv = (x1 + (x2 - x1) * t) * (w - 1), (y1 + (y2 - y1) * t) * (h - 1)
                    got_d = batch[f"depth{v}"][b, 0].double().numpy()
                    got_l = batch[f"label{v}"][b].numpy()
                    hit = np.zeros((size, size), bool)
                    for ex in (-eps, eps):
                        for ey in (-eps, eps):
                            nx = np.clip(np.floor(u + 0.5 + ex).astype(int), 0, w - 1)
                            ny = np.clip(np.floor(vv + 0.5 + ey).astype(int), 0, h - 1)
                            want_d, want_l = depth[np.ix_(ny, nx)], label[np.ix_(ny, nx)]
                            hit |= np.isclose(got_d, want_d, rtol=1e-6, atol=0) & (got_l == want_l)
                    ok &= bool(hit.all())
                if ok:
                    hits.append(i)
            assert len(hits) == 1, hits
            matched += hits
    assert sorted(matched) == list(range(len(sources)))


def test_an_epoch_without_resampling_keeps_every_workers_partial_batch(tmp_path):
    """Each worker collates its own batches, so with drop_last=False two workers over 3 shards of 4
    make 5 batches (3+3+2, 3+1) where len() = ceil(12 / 3) = 4: none may be cut off."""
    from tests.conftest import convert_synthetic

    ds = convert_synthetic(tmp_path / "ds", num=12, size=(48, 32), shard_size=4)
    loader = make_loader(ds, 3, views=SMALL, drop_last=False, shuffle=False, num_workers=2)
    keys = rows(list(loader))
    assert len(keys) == 12 == len(set(keys))
    # An epoch length asked for (or a resampled stream) is still cut at len().
    cut = make_loader(ds, 3, views=SMALL, drop_last=False, epoch_samples=6, num_workers=2)
    assert len(list(cut)) == len(cut) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_skips_are_counted_across_workers_and_left_out_of_the_batch(
    synthetic_dataset, tmp_path, caplog, workers
):
    """One bad sample and one shard cut short, skipped: an epoch of 14 good samples (the cut shard's
    samples 0 and 2 stay), and ``loader.skipped`` says 1 shard and 1 sample whichever worker met
    them; the count travels with the batches but never shows in one."""
    from datakit.skips import Skipped

    shard = with_bad_units(synthetic_dataset, tmp_path / "bad")
    loader = make_loader(tmp_path / "bad", 2, views=SMALL, num_workers=workers, on_error="skip")
    with caplog.at_level("WARNING"):
        batches = list(loader)
    assert len(batches) == 7 and all(set(b) == set(BATCH_KEYS) for b in batches)
    assert loader.skipped == Skipped(shards=1, samples=1)
    list(loader)  # a second epoch adds its own
    assert loader.skipped == Skipped(shards=2, samples=2)
    if workers == 0:  # the records of this process: one line per skip, naming the shard
        lines = [r.getMessage() for r in caplog.records if str(shard) in r.getMessage()]
        sample = f"skipping sample: {shard}: train_000001.rgb.jpg: image bytes do not decode"
        cut = (
            f"skipping shard: {shard}: unreadable shard (unexpected end of data) (after 3 samples)"
        )
        assert sorted(lines) == [sample, sample, cut, cut]


def test_a_sample_with_two_rgb_members_is_refused_as_schema_decode_does(
    synthetic_dataset, tmp_path
):
    import io
    import shutil
    import tarfile

    shutil.copytree(synthetic_dataset, tmp_path / "two")
    shard = tmp_path / "two" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, payload in members:
            tar.addfile(m, io.BytesIO(payload))
            if m.name == "train_000001.rgb.jpg":  # a PNG beside the JPEG, in the same sample
                extra = tarfile.TarInfo("train_000001.rgb.png")
                extra.size = len(payload)
                tar.addfile(extra, io.BytesIO(payload))
    expected = f"{shard}: train_000001: two members for field rgb"
    with pytest.raises(SampleError) as err:
        list(datakit.open_dataset(tmp_path / "two"))
    assert str(err.value) == expected
    for device in ("cpu", "cuda"):  # the CPU path's decoding and the GPU path's worker side
        loader = make_loader(tmp_path / "two", 4, views=SMALL, shuffle=False, device=device)
        loader.device = "cpu"  # the GPU path's kernels also run on CPU torch
        with pytest.raises(SampleError) as err:
            list(loader)
        assert str(err.value) == expected
