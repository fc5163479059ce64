"""Segmentation evaluation: confusion-matrix scores against hand counts, the probe's capacity (one-hot
label maps -> ~100% mIoU, random features far lower), the protocols end to end on synthetic shards,
backbone loading and the ``datakit eval`` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from datakit.cli import main
from datakit.errors import DatakitError
from training.eval_data import LabeledImages, eval_size, in_holdout, read_split, resize_pair
from training.evaluate import EvalConfig, build_config, evaluate, load_backbone, recalibrate_bn
from training.metrics_seg import confusion_matrix, scores
from training.probe import fit_probe, score_head

IGNORE = 255


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # On a shared 2-core machine, two intra-op threads each spinning for a core make these tiny
    # tensor ops ~20x slower than one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_confusion_matrix_and_scores_match_hand_counts() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = confusion_matrix(pred, target, 3, IGNORE)
    # rows = target, columns = prediction; the ignored pixel (predicted 2) is not counted
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(conf, expected)
    s = scores(conf)
    # IoU_c = TP / (row + column - TP): 1/(2+3-1), 2/(3+3-2), 1/(2+1-1)
    assert s.iou == pytest.approx([1 / 4, 2 / 4, 1 / 2])
    assert s.miou == pytest.approx((1 / 4 + 2 / 4 + 1 / 2) / 3)
    assert s.pixel_accuracy == pytest.approx(4 / 7)
    assert s.support == [2, 3, 2]


def test_absent_class_is_left_out_of_the_mean_and_unknown_targets_ignored() -> None:
    target = torch.tensor([0, 0, 1, 7])  # 7: outside the label set, not counted
    pred = torch.tensor([0, 0, 1, 3])
    s = scores(confusion_matrix(pred, target, 4, IGNORE))
    assert s.iou[:2] == [1.0, 1.0]
    assert math.isnan(s.iou[2]) and math.isnan(s.iou[3])
    assert s.miou == 1.0
    # a class predicted but never present scores 0 and counts
    s = scores(confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 0]), 3, IGNORE))
    assert s.iou[0] == 0.5 and s.iou[2] == 0.0 and math.isnan(s.iou[1])
    assert s.miou == pytest.approx(0.25)
    with pytest.raises(ValueError):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 3, IGNORE)


def _blob_labels(n: int, k: int, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Label maps of random rectangles of k classes, with an ignored strip."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n, 1, 1), generator=g).expand(n, h, w).clone()
    for i in range(n):
        for _ in range(4):
            y0, x0 = torch.randint(0, h - 4, (2,), generator=g).tolist()
            y1, x1 = y0 + int(torch.randint(4, h // 2, (1,), generator=g)), x0 + 8
            labels[i, y0:y1, x0:x1] = int(torch.randint(0, k, (1,), generator=g))
        labels[i, :, -2:] = IGNORE
    return labels


def _probe_miou(features: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    head = fit_probe(
        {"c5": features[:24]}, labels[:24], num_classes=k, ignore_index=IGNORE, epochs=40, lr=0.05
    )

    def batcher(idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"c5": features[24:][idx]}, labels[24:][idx]

    s, _ = score_head(
        head, batcher, len(labels) - 24, num_classes=k, ignore_index=IGNORE, batch_size=8
    )
    return s.miou


def test_probe_learns_one_hot_labels_and_random_features_score_far_lower() -> None:
    k = 5
    labels = _blob_labels(32, k)
    one_hot = torch.nn.functional.one_hot(labels.clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
    assert _probe_miou(one_hot, labels, k) > 0.99
    random = torch.randn(32, 16, 24, 32, generator=torch.Generator().manual_seed(1))
    assert _probe_miou(random, labels, k) < 0.4


def test_a_batch_with_every_pixel_ignored_does_not_move_the_head() -> None:
    from training.probe import ProbeHead, fit_head

    head = ProbeHead(4, 3)
    before = [p.detach().clone() for p in head.parameters()]
    feats = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    target = torch.full((2, 6, 8), 255, dtype=torch.long)
    history = fit_head(
        head, lambda idx: ({"c5": feats[idx]}, target[idx]), 2, num_classes=3, ignore_index=255,
        epochs=2, batch_size=2, lr=0.1, weight_decay=0.5, seed=0,
    )  # fmt: skip
    assert all(math.isnan(h) for h in history)
    for a, b in zip(before, head.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def test_eval_size_and_holdout_are_stable() -> None:
    assert eval_size(72, 96, 96) == (96, 128)
    assert eval_size(480, 640, 224) == (224, 288)
    assert eval_size(10, 10, 8) == (32, 32)
    keys = [f"train_{i:06d}" for i in range(2000)]
    frac = sum(in_holdout(key, 0.2) for key in keys) / len(keys)
    assert 0.15 < frac < 0.25
    # the same hold-out in another process with another string hash seed (a later eval run): the
    # samples scored must never drift into the ones the probe trained on
    import subprocess
    import sys

    code = (
        "from training.eval_data import in_holdout\n"
        "print(''.join('1' if in_holdout(f'train_{i:06d}', 0.2) else '0' for i in range(2000)))"
    )
    here = "".join("1" if in_holdout(key, 0.2) else "0" for key in keys)
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    assert res.stdout.strip() == here


def test_labels_are_resized_in_register_with_the_image() -> None:
    """Area interpolation averages around output pixel centres; the labels' nearest pixel must be
    taken there too, not half an output pixel up and left (OpenCV's plain INTER_NEAREST)."""
    ramp = torch.arange(640).expand(480, 640).numpy()
    rgb, label = resize_pair(ramp[..., None].repeat(3, -1).astype("float32"), ramp, (224, 288))
    assert label.dtype.name == "int64" and label.shape == (224, 288)
    assert abs(float((label - rgb[..., 0]).mean())) < 0.1  # in source pixels; was -1.06


def test_a_limit_on_a_holdout_reads_on_until_it_has_enough(tmp_path: Path) -> None:
    """--max-eval N on the hold-out of train gets N held-out samples, not the ~20% of N that the
    first shards holding N samples contain (or none at all)."""
    from datakit.reader import open_dataset
    from tests.conftest import convert_synthetic

    ds = open_dataset(str(convert_synthetic(tmp_path / "ds", num=32, size=(48, 36))))
    held = [f"train_{i:06d}" for i in range(32) if in_holdout(f"train_{i:06d}", 0.2)]
    assert len(held) >= 4
    part = read_split(ds, "train", (32, 32), select=lambda k: in_holdout(k, 0.2), limit=4)
    assert part.keys == held[:4]
    assert read_split(ds, "train", (32, 32), limit=6).keys == [f"train_{i:06d}" for i in range(6)]


def test_recalibrated_bn_goes_back_to_its_momentum() -> None:
    """After the one cumulative pass, finetune must update BN statistics as a moving average."""
    backbone = load_backbone(None, arch="resnet18")
    data = LabeledImages(
        torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
        torch.zeros(2, 32, 32, dtype=torch.int64),
        ["a", "b"],
    )
    recalibrate_bn(backbone, data, torch.device("cpu"), 2)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    assert not backbone.training


@pytest.mark.parametrize(
    "yaml_text", ["image_size: abc", "holdout: twenty", "levels: 5", "batch_size: '8'"]
)
def test_an_eval_config_value_of_the_wrong_type_is_one_error_line(
    tmp_path: Path, yaml_text: str
) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml_text + "\n")
    res = CliRunner().invoke(
        main,
        ["eval", "--data", str(tmp_path / "none"), "--random-init", "--config", str(cfg),
         "--out", str(tmp_path / "e.json")],
    )  # fmt: skip
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert yaml_text.split(":")[0] in res.output.strip().splitlines()[-1]
    assert build_config(("c", {"levels": ["c4", "c5"], "holdout": 1 / 4})).levels == ("c4", "c5")


def test_credentials_in_the_data_url_are_not_recorded_in_eval_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EVAL.json records the resolved config: its ``data`` must be the clean URL (storage.md)."""
    import datakit.urls
    from datakit.urls import url_credentials

    monkeypatch.setattr(datakit.urls, "_CREDENTIALS", {})  # what this test registers stays here

    cfg = build_config(("flags", {"data": "s3://KEYID:s3cr3t-value@bucket-cred2/ds", "out": "e"}))
    assert cfg.data == "s3://bucket-cred2/ds"
    assert url_credentials(cfg.data) == ("KEYID", "s3cr3t-value")


def _cfg(data: Path, **kw: object) -> EvalConfig:
    base: dict[str, object] = dict(
        data=str(data), arch="resnet18", image_size=32, epochs=2, batch_size=8
    )
    base.update(kw)
    return EvalConfig(**base)  # type: ignore[arg-type]


def test_linear_probe_end_to_end_writes_json(synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    r = evaluate(_cfg(synthetic_dataset, out=str(out), levels=("c3", "c4", "c5")))
    saved = json.loads(out.read_text())
    assert saved == r
    assert 0.0 <= r["miou"] <= 1.0
    assert r["classes"] == ["floor", "wall", "box", "sphere", "cylinder", "panel"]
    assert len(r["per_class_iou"]) == 6
    assert (r["num_train"], r["num_eval"], r["eval_split"]) == (16, 8, "val")
    assert r["levels"] == ["c3", "c4", "c5"] and r["protocol"] == "linear"
    assert sum(map(sum, r["confusion"])) == sum(r["support"]) > 0
    # The reported scores (rounded to 6 places) are those of the reported confusion matrix (rows =
    # target), by hand.
    conf = r["confusion"]
    rows = [sum(row) for row in conf]
    cols = [sum(row[c] for row in conf) for c in range(len(conf))]
    assert r["support"] == rows
    ious = [
        conf[c][c] / (rows[c] + cols[c] - conf[c][c]) if rows[c] + cols[c] else None
        for c in range(len(conf))
    ]
    assert r["per_class_iou"] == pytest.approx(ious, abs=1e-6)
    present = [v for v in ious if v is not None]
    assert r["miou"] == pytest.approx(sum(present) / len(present), abs=1e-6)
    accuracy = sum(conf[c][c] for c in range(len(conf))) / sum(rows)
    assert r["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_holdout_when_the_dataset_has_no_val_and_finetune(tmp_path: Path) -> None:
    from tests.conftest import convert_synthetic

    train_only = convert_synthetic(tmp_path / "train-only", num=16, size=(48, 36))
    r = evaluate(_cfg(train_only, protocol="finetune", epochs=1))
    assert r["eval_split"] == "train[held out 20%]" and r["config"]["eval_split"] is None
    assert r["num_train"] + r["num_eval"] == 16 and r["num_eval"] > 0
    assert r["protocol"] == "finetune" and 0.0 <= r["miou"] <= 1.0


def test_a_named_eval_split_the_dataset_lacks_is_a_usage_error(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """The hold-out stands in for val only when no split was named; a named one must exist."""
    out = tmp_path / "e.json"
    res = CliRunner().invoke(
        main,
        ["eval", "--data", str(synthetic_dataset), "--random-init", "--arch", "resnet18",
         "--eval-split", "nope", "--out", str(out), "--image-size", "32", "--epochs", "1"],
    )  # fmt: skip
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--eval-split 'nope'" in lines[0] and str(synthetic_dataset) in lines[0]
    assert "(has train, val)" in lines[0]
    assert not out.exists()


def test_the_training_split_is_never_scored_as_its_own_eval_split(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """--train-split val: the default eval split (val) is the training one, so a part of it is held
    out; naming the same split for both is a usage error."""
    args = ["eval", "--data", str(synthetic_dataset), "--random-init", "--arch", "resnet18",
            "--train-split", "val", "--image-size", "32", "--epochs", "1"]  # fmt: skip
    out = tmp_path / "e.json"
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["eval_split"] == "val[held out 20%]" and r["num_train"] + r["num_eval"] == 8
    assert r["num_eval"] > 0 and r["num_train"] > 0
    res = CliRunner().invoke(
        main, [*args, "--eval-split", "val", "--out", str(tmp_path / "x.json")]
    )
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--train-split and --eval-split are both 'val'" in lines[0]
    assert not (tmp_path / "x.json").exists()


def test_eval_json_records_the_resolved_config(synthetic_dataset: Path, tmp_path: Path) -> None:
    """A resnet18 checkpoint evaluated with the default --arch: the recorded config names the
    architecture used, the protocol's epochs and lr and the split scored, not the defaults."""
    plain = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    cfg = EvalConfig(data=str(synthetic_dataset), checkpoint=str(plain), image_size=32, max_train=4)
    assert cfg.arch is None and cfg.epochs is None and cfg.lr is None
    r = evaluate(cfg)
    assert r["arch"] == "resnet18" and r["config"]["arch"] == "resnet18"
    # --arch naming another architecture than the checkpoint's: refused before the data is read
    res = CliRunner().invoke(
        main,
        ["eval", "--data", str(tmp_path / "no-such-data"), "--checkpoint", str(plain),
         "--arch", "resnet50", "--out", str(tmp_path / "x.json")],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"--arch resnet50: {plain} holds a resnet18 backbone" in res.output
    assert not (tmp_path / "x.json").exists()
    assert r["config"]["epochs"] == r["epochs"] == 30 and r["config"]["lr"] == 0.01
    assert r["config"]["eval_split"] == r["eval_split"] == "val"


def test_linear_probe_is_deterministic_and_streams_when_cache_is_small(
    synthetic_dataset: Path,
) -> None:
    a = evaluate(_cfg(synthetic_dataset, max_train=8))
    b = evaluate(_cfg(synthetic_dataset, max_train=8, cache_mb=0))
    assert a["num_train"] == 8
    assert a["confusion"] == b["confusion"]


def test_load_backbone_from_checkpoint_and_torchvision_state(tmp_path: Path) -> None:
    net = torchvision.models.resnet18()
    plain = tmp_path / "r18.pth"
    torch.save(net.state_dict(), plain)
    b = load_backbone(str(plain), ("c4", "c5"))
    assert b.arch == "resnet18" and b.levels == ("c4", "c5")
    assert torch.equal(b.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    ckpt = tmp_path / "last.pt"
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"format": "datakit-train/1", "arch": "resnet18", "backbone": state}, ckpt)
    assert torch.equal(load_backbone(str(ckpt)).conv1.weight, net.conv1.weight)
    with pytest.raises(DatakitError, match="no such checkpoint"):
        load_backbone(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(DatakitError, match="does not fit"):
        load_backbone(str(bad))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(DatakitError, match="not a readable"):
        load_backbone(str(tmp_path / "junk.pt"))


def test_cli_eval(synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    args = [
        "eval",
        "--data",
        str(synthetic_dataset),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--epochs",
        "1",
    ]
    r = CliRunner().invoke(main, [*args, "--random-init", "--arch", "resnet18"])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and json.loads(out.read_text())["arch"] == "resnet18"
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "--checkpoint" in r.output
    r = CliRunner().invoke(main, [*args, "--checkpoint", str(tmp_path / "none.pt")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    # one line, before any data is read (no dataset summary first)
    assert r.output.strip() == f"Error: {tmp_path / 'none.pt'}: no such checkpoint", r.output


def test_eval_when_every_train_shard_is_skipped(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --on-shard-error sets DATAKIT_ON_SHARD_ERROR for loader workers: undo it after this test
    monkeypatch.setenv("DATAKIT_ON_SHARD_ERROR", "fail")
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    for shard in data.glob("train-*.tar"):
        shard.unlink()
    args = ["--on-shard-error", "skip", "eval", "--data", str(data), "--random-init"]
    r = CliRunner().invoke(main, [*args, "--arch", "resnet18", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (
        r.output.strip().splitlines()[-1] == f"Error: {data}: no readable sample in split 'train'"
    )
    assert not (tmp_path / "e.json").exists()


def test_eval_counts_what_it_skipped(synthetic_dataset: Path, tmp_path: Path) -> None:
    """A train shard cut short with a garbled sample, read by 2 workers: --on-error skip trains the
    probe on the 14 good samples and reports 1 shard, 1 sample in the JSON and the summary; without
    it the evaluation stops with one line naming the shard."""
    from tests.conftest import with_bad_units

    shard = with_bad_units(synthetic_dataset, tmp_path / "bad")
    out = tmp_path / "e.json"
    args = [
        "eval", "--data", str(tmp_path / "bad"), "--random-init", "--arch", "resnet18",
        "--image-size", "32", "--epochs", "1", "--workers", "2", "--out", str(out),
    ]  # fmt: skip
    r = CliRunner().invoke(main, [*args, "--on-error", "skip"])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["skipped"] == {"shards": 1, "samples": 1} and result["num_train"] == 14
    assert (
        r.stdout.strip()
        .splitlines()[-1]
        .endswith(f"-> {out}; skipped 1 shard, 1 sample (see the log lines above)")
    )
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "strict.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"Error: {shard}: "), r.output


def test_a_sample_without_label_is_skipped_and_counted_or_one_error_line(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    import io
    import tarfile

    from tests.conftest import with_bad_member

    shard = with_bad_member(synthetic_dataset, tmp_path / "bad", "train_000001.label.png")
    with tarfile.open(shard) as tar:  # drop the label member altogether
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, payload in members:
            if m.name != "train_000001.label.png":
                tar.addfile(m, io.BytesIO(payload))
    out = tmp_path / "e.json"
    args = [
        "eval", "--data", str(tmp_path / "bad"), "--random-init", "--arch", "resnet18",
        "--image-size", "32", "--epochs", "1", "--out", str(out),
    ]  # fmt: skip
    r = CliRunner().invoke(main, [*args, "--on-error", "skip"])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["skipped"] == {"shards": 0, "samples": 1} and result["num_train"] == 15
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "strict.json")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert lines[-1] == f"Error: {shard}: sample train_000001 has no label member", r.output


def _png(label: object) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def test_a_label_value_outside_the_label_set_is_one_error_line_or_skipped(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """A label pixel that is neither a class (0..5) nor ignore_index is bad input (as the folder
    converter treats it): one line naming the shard and sample, or skipped and counted."""
    import numpy as np

    from tests.conftest import with_bad_member

    label = np.zeros((72, 96), np.uint8)
    label[10:20, 10:20] = 9  # synthetic6 has classes 0..5, ignore 255
    shard = with_bad_member(
        synthetic_dataset, tmp_path / "bad", "train_000001.label.png", _png(label)
    )
    out = tmp_path / "e.json"
    args = [
        "eval", "--data", str(tmp_path / "bad"), "--random-init", "--arch", "resnet18",
        "--image-size", "32", "--epochs", "1", "--out", str(out),
    ]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith(f"Error: {shard}: sample train_000001: label value 9 "), r.output
    assert not out.exists()
    r = CliRunner().invoke(main, [*args, "--on-error", "skip"])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["skipped"] == {"shards": 0, "samples": 1} and result["num_train"] == 15


def test_a_label_set_without_classes_is_one_error_line(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """``datakit convert folder --label`` without --classes writes an empty class list: eval needs
    one, and says so (was a traceback from a 0-channel conv)."""
    data = tmp_path / "noclasses"
    shutil.copytree(synthetic_dataset, data)
    info = json.loads((data / "_info.json").read_text())
    info["labels"]["classes"] = []
    (data / "_info.json").write_text(json.dumps(info))
    out = tmp_path / "e.json"
    r = CliRunner().invoke(
        main,
        ["eval", "--data", str(data), "--random-init", "--arch", "resnet18", "--image-size", "32",
         "--epochs", "1", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {data}: "), r.output
    assert "no classes" in lines[0] and not out.exists()


def test_a_checkpoint_named_in_the_config_file_is_used_and_random_init_wins(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """--config eval.yaml takes the same keys as the flags, checkpoint included; --random-init (a
    flag) wins over a checkpoint from the file (it was silently ignored: the checkpoint was
    scored as the baseline)."""
    plain = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"checkpoint: {plain}\nimage_size: 32\nepochs: 1\nmax_train: 4\n")
    args = ["eval", "--data", str(synthetic_dataset), "--config", str(cfg)]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.json").read_text())["checkpoint"] == str(plain)
    r = CliRunner().invoke(
        main, [*args, "--random-init", "--arch", "resnet18", "--out", str(tmp_path / "b.json")]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.json").read_text())["checkpoint"] is None


def test_an_empty_holdout_and_a_folder_as_checkpoint_say_what_is_wrong(tmp_path: Path) -> None:
    """Two train samples, none in the 20% hold-out: the error names the hold-out, not 'no samples
    in train'. A run folder passed as --checkpoint is a folder, not 'no such checkpoint'."""
    from tests.conftest import convert_synthetic

    data = convert_synthetic(tmp_path / "two", num=2, size=(48, 36))
    args = ["eval", "--data", str(data), "--image-size", "32", "--epochs", "1"]
    r = CliRunner().invoke(
        main, [*args, "--random-init", "--arch", "resnet18", "--out", str(tmp_path / "e.json")]
    )
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {data}: ") and "held out" in line and "2 samples" in line
    run = tmp_path / "run"
    run.mkdir()
    r = CliRunner().invoke(main, [*args, "--checkpoint", str(run), "--out", str(tmp_path / "e")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.strip() == f"Error: {run}: is a folder, not a checkpoint file", r.output


@pytest.mark.slow
def test_demo_trains_and_evaluates(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--num", "8", "--val", "4", "--steps", "2", "--workers", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "summary" in r.output and "random init" in r.output
    for name in ("run/last.pt", "eval-pretrained.json", "eval-random.json", "preview.png"):
        assert (out / name).exists(), name


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """The demo replaces OUT/run and OUT/data: a user's folder holding a run of that name is left
    alone, and a count that would leave no training sample is refused before any work."""
    out = tmp_path / "project"
    (out / "run").mkdir(parents=True)
    (out / "run" / "last.pt").write_bytes(b"a user's run")
    r = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"Error: --out {out}: holds files not made")
    assert (
        sorted(os.listdir(out)) == ["run"]
        and (out / "run" / "last.pt").read_bytes() == b"a user's run"
    )
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "new"), "--num", "0"])
    assert r.exit_code == 2 and "'--num': 0 is not in the range" in r.output, r.output
    assert not (tmp_path / "new").exists()


def test_an_unwritable_out_fails_before_any_work_and_a_failure_leaves_no_folder(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """--out under a file fails at once, naming --out, not after the probe is trained (the data is
    not even read: a missing dataset is not what the line names). A run that fails after it began
    leaves neither EVAL.json, a temporary nor the folders it made for them."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["eval", "--random-init", "--arch", "resnet18", "--image-size", "32", "--epochs", "1"]
    out = blocker / "sub" / "e.json"
    r = CliRunner().invoke(
        main, [*args, "--data", str(tmp_path / "no-such-data"), "--out", str(out)]
    )
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {out}: cannot be written ({blocker} is not a folder)"
    ], r.output
    unlabelled = tmp_path / "unlabelled"  # fails after the output was opened: no labels
    shutil.copytree(synthetic_dataset, unlabelled)
    info = json.loads((unlabelled / "_info.json").read_text())
    (unlabelled / "_info.json").write_text(json.dumps({**info, "labels": None}))
    r = CliRunner().invoke(
        main, [*args, "--data", str(unlabelled), "--out", str(tmp_path / "new" / "deep" / "e.json")]
    )
    assert r.exit_code == 1 and "has no labels" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "unlabelled"]


def test_eval_json_names_what_pretrained_the_checkpoint(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    from tests.test_export import make_checkpoint

    ckpt, _ = make_checkpoint(tmp_path, "resnet18")
    cfg = EvalConfig(data=str(synthetic_dataset), checkpoint=str(ckpt), image_size=32, epochs=1)
    assert evaluate(cfg)["pretraining"] == {"method": "pixpro", "step": 1, "steps": 1}
    plain = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    cfg = dataclasses.replace(cfg, checkpoint=str(plain))
    assert evaluate(cfg)["pretraining"] is None


def test_an_eval_split_without_a_labelled_pixel_is_one_error_line(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """Scored samples whose every label pixel is ignore_index measure nothing: one line, not an
    EVAL.json with mIoU null and 'pixel accuracy 0.0' (exit 0, as before)."""
    import numpy as np

    from tests.conftest import with_bad_member

    blank = np.full((72, 96), 255, np.uint8)
    with_bad_member(synthetic_dataset, tmp_path / "blank", "val_000000.label.png", _png(blank))
    out = tmp_path / "e.json"
    r = CliRunner().invoke(
        main,
        ["eval", "--data", str(tmp_path / "blank"), "--random-init", "--arch", "resnet18",
         "--image-size", "32", "--epochs", "1", "--max-eval", "1", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'blank'}: every label pixel of the 1 val sample is ignore_index 255: "
        "nothing to score"
    ), r.output
    assert not out.exists()


def test_ignore_index_inside_the_class_range_and_negative_targets_are_not_counted() -> None:
    # --ignore-index may be any code, a class id included (0 here): those pixels are dropped, as
    # are negative targets, whatever was predicted there
    target = torch.tensor([0, 0, 1, 2, -1, -3])
    pred = torch.tensor([1, 2, 1, 2, 0, 1])
    conf = confusion_matrix(pred, target, 3, ignore_index=0)
    assert torch.equal(conf, torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert scores(conf).pixel_accuracy == 1.0
    nothing = scores(confusion_matrix(torch.tensor([1, 2]), torch.tensor([0, -1]), 3, 0))
    assert math.isnan(nothing.miou) and math.isnan(nothing.pixel_accuracy)
