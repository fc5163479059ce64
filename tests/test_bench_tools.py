"""Helpers of the investigation scripts in bench/ that the results rest on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.pixcon_negatives import SplitBatchNorm, shuffled, split_bn


def test_split_batchnorm_normalises_each_interleaved_group_on_its_own() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(8, 3, 4, 5) * torch.arange(1, 9).view(8, 1, 1, 1)  # groups differ in scale
    split = SplitBatchNorm(bn, 2)
    out = split(x)
    for g in (0, 1):
        part = x[g::2]  # images g, g + 2, ...
        mean = part.mean((0, 2, 3), keepdim=True)
        var = part.var((0, 2, 3), unbiased=False, keepdim=True)
        want = (part - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, 3, 1, 1)
        torch.testing.assert_close(out[g::2], want + bn.bias.view(1, 3, 1, 1))
    # running statistics: the mean over groups of what BatchNorm would track for each group
    momentum = bn.momentum or 0.1
    unbiased = torch.stack([x[g::2].var((0, 2, 3)) for g in (0, 1)]).mean(0)
    means = torch.stack([x[g::2].mean((0, 2, 3)) for g in (0, 1)]).mean(0)
    torch.testing.assert_close(split.running_mean, momentum * means)
    torch.testing.assert_close(split.running_var, (1 - momentum) + momentum * unbiased)
    split.eval()  # eval mode: the running statistics, as BatchNorm2d
    bn.load_state_dict(split.state_dict())
    bn.eval()
    torch.testing.assert_close(split(x), bn(x))


def test_split_bn_replaces_every_batchnorm_and_shuffled_restores_order() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    split_bn(net, 4)
    assert [type(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [
        SplitBatchNorm,
        SplitBatchNorm,
    ]
    net.eval()  # per-sample outputs do not depend on the batch order in eval mode
    x = torch.randn(8, 3, 2, 2)
    torch.testing.assert_close(shuffled(lambda v: {"c5": net(v)}, x)["c5"], net(x))


def test_gpu_session_runs_every_gpu_marked_test_file_and_refuses_unknown_parts(tmp_path) -> None:
    """bench/gpu_session.sh names the test files it runs (the device lacks the S3 test stack, so
    it cannot collect them all): a new GPU test elsewhere must not be silently left out."""
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = (repo / "bench" / "gpu_session.sh").read_text()
    listed = set(re.findall(r"tests/test_\w+\.py", script))
    marked = {
        f"tests/{p.name}"
        for p in (repo / "tests").glob("test_*.py")
        if re.search(r"^\s*@pytest\.mark\.gpu|pytestmark.*mark\.gpu", p.read_text(), re.M)
    }
    assert marked and marked <= listed, marked - listed
    res = subprocess.run(
        ["bash", str(repo / "bench" / "gpu_session.sh"), "tests", "bogus"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")},
        check=False,
    )
    assert res.returncode == 2 and "unknown part bogus" in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran or was made


def test_cell_similarity_labels_and_cosines_by_hand() -> None:
    from bench.cell_similarity import cell_labels, similarity_stats

    labels = torch.tensor(
        [
            [1, 1, 2, 2, 9, 9],
            [1, 3, 2, 255, 9, 9],
            [4, 4, 5, 5, 255, 255],
            [4, 4, 6, 5, 255, 255],
        ]
    )[None]
    major, share = cell_labels(labels, (2, 3), ignore=255)
    assert major.tolist() == [[[1, 2, 9], [4, 5, 0]]]
    assert share.tolist() == [[[0.75, 1.0, 1.0], [1.0, 0.75, 0.0]]]

    # two images of 1x2 cells, two channels: image 0 = [1,0], [1,0] (labels 1, 1: a "same"
    # pair, cosine 1); image 1 = [0,1], [1,0] (labels 1, 2: a "diff" pair, cosine 0)
    feats = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 0.0]]]])
    major = torch.tensor([[[1, 1]], [[1, 2]]])
    pure = torch.ones(2, 1, 2, dtype=torch.bool)
    stats = similarity_stats(feats, major, pure, standardise=False)
    # within (1 + 0) / 2; across: a.c 0, a.d 1, b.c 0, b.d 1; same position: a.c 0, b.d 1
    assert stats == {"within": 0.5, "across": 0.5, "same_pos": 0.5, "same": 1.0, "diff": 0.0}
    # standardised per channel: any per-channel scale and shift leaves the statistics unchanged
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 4, 2, 3, generator=g)
    major = torch.randint(0, 3, (3, 2, 3), generator=g)
    pure = torch.rand(3, 2, 3, generator=g) > 0.2
    moved = feats * torch.tensor([0.1, 5.0, 2.0, 30.0]).view(1, 4, 1, 1) + torch.tensor(
        [3.0, -1.0, 0.0, 7.0]
    ).view(1, 4, 1, 1)
    a, b = similarity_stats(feats, major, pure), similarity_stats(moved, major, pure)
    assert a == pytest.approx(b, abs=1e-6)  # (float32 inputs)
    assert similarity_stats(moved, major, pure, standardise=False) != pytest.approx(a)


def test_instance_stats_by_hand_and_distinct_images_differ(tmp_path) -> None:
    import numpy as np

    from bench.instance_signal import instance_stats, write_distinct

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.2], [0.0, 1.0], [1.0, 0.0]])
    c = 1 / 1.04**0.5  # cos of (1, 0) and (1, 0.2)
    r = 2**-0.5
    pos, neg, top1 = instance_stats(a, b)
    assert pos == pytest.approx((c + 1 + r) / 3)
    # off the diagonal: a0.b1 = 0, a0.b2 = 1, a1.b0 = 0.2 c, a1.b2 = 0, a2.b0 = 1.2 r c, a2.b1 = r
    assert neg == pytest.approx((0 + 1 + 0.2 * c + 0 + 1.2 * r * c + r) / 6)
    assert top1 == pytest.approx(1 / 3)  # only row 1's nearest is its own (row 0: b2, row 2: b0)

    write_distinct(tmp_path, 4, (32, 24), seed=0)
    import cv2

    images = [cv2.imread(str(tmp_path / "rgb" / f"{i:04d}.png")) for i in range(4)]
    depths = [
        cv2.imread(str(tmp_path / "depth" / f"{i:04d}.png"), cv2.IMREAD_UNCHANGED) for i in range(4)
    ]
    assert all(im.shape == (24, 32, 3) for im in images)
    assert all(d.dtype == np.uint16 and d.min() >= 1000 and d.max() <= 3300 for d in depths)
    for i in range(4):
        for j in range(i):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).mean() > 20


@pytest.mark.usefixtures("one_torch_thread")
def test_pixcon_negatives_writes_strict_json_while_the_queue_holds_no_real_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At step 0 the ``filled`` variant has no negative yet: its row says null, not NaN (which
    json.loads of other languages and --out readers refuse)."""
    from bench.pixcon_negatives import main
    from tests.conftest import convert_synthetic

    data = convert_synthetic(tmp_path / "ds", num=8, size=(48, 36))
    args = ["--data", str(data), "--negatives", "filled", "--steps", "2", "--every", "1"]
    assert main([*args, "--batch-size", "4", "--image-size", "32", "--queue", "16",
                 "--out", str(tmp_path / "rows.json")]) == 0  # fmt: skip

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))

    rows = [strict(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["neg_cos"] is None for r in rows] == [True, False]  # type: ignore[index]
    assert strict((tmp_path / "rows.json").read_text())["rows"] == rows  # type: ignore[index]


def test_effective_rank_counts_equal_directions_and_one_line_as_one() -> None:
    from bench.feature_rank import effective_rank

    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    k = 5
    coef = torch.randn(400, k)
    coef = (coef - coef.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(coef.t()))).t()
    cells = coef @ q[:k] + 3.0  # k orthogonal directions of equal variance, off the origin
    assert effective_rank(cells) == pytest.approx(k, rel=1e-6)
    line = torch.randn(50, 1) * torch.randn(1, 16)
    assert effective_rank(line) == pytest.approx(1.0)
    assert effective_rank(torch.ones(10, 4)) == 1.0  # all alike: no direction at all
    # two directions, variance 3:1 -> p = (3/4, 1/4)
    two = torch.cat([coef[:, :1] * 3**0.5, coef[:, 1:2]], 1) @ q[:2]
    want = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(two) == pytest.approx(want, rel=1e-6)


def test_stage_norms_group_the_conv_weights_of_each_stage() -> None:
    import torchvision

    from bench.feature_rank import stage_norms

    net = torchvision.models.resnet18()
    with torch.no_grad():
        net.conv1.weight.mul_(10.0)
    norms = stage_norms(net)
    assert list(norms) == ["conv1", "layer1", "layer2", "layer3", "layer4"]  # no fc (2-D)
    assert norms["conv1"] == pytest.approx(float(net.conv1.weight.norm()), rel=1e-6)
    want = math.sqrt(sum(float((p**2).sum()) for n, p in net.named_parameters()
                         if n.startswith("layer4") and p.dim() == 4))  # fmt: skip
    assert norms["layer4"] == pytest.approx(want, rel=1e-6)
