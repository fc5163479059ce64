"""``datakit export``: the backbone of RUN/last.pt loads into torchvision (strict) and detectron2's
layout; a checkpoint's ``weights`` option reads it back."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from datakit.cli import main
from training import checkpoint
from training.config import TrainConfig, resolve
from training.export import detectron2_name
from training.methods import build_method
from training.models import build_backbone
from training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_checkpoint(tmp_path: Path, arch: str) -> tuple[Path, dict[str, torch.Tensor]]:
    cfg = resolve(
        TrainConfig(data="-", out=str(tmp_path), arch=arch, proj_hidden=64, steps=1, batch_size=4),
        num_samples=4,
    )
    torch.manual_seed(1)
    method = build_method(cfg)
    with torch.no_grad():  # a backbone that differs from any fresh initialisation
        for p in method.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "last.pt"
    state = checkpoint.build_state(
        cfg, method, build_optimizer(method, cfg), 1, [{"epoch": 0, "batch": 1}]
    )
    checkpoint.save(path, state)
    return path, {k: v.clone() for k, v in method.backbone.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_export_loads_strictly(tmp_path: Path, arch: str) -> None:
    ckpt, backbone = make_checkpoint(tmp_path, arch)
    out = tmp_path / "backbone.pth"
    res = CliRunner().invoke(main, ["export", str(ckpt), str(out)])
    assert res.exit_code == 0, res.output
    model = getattr(torchvision.models, arch)()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    for k, v in backbone.items():
        assert torch.equal(model.state_dict()[k], v), k
    # the same features through torchvision's modules and ours
    ours = build_backbone(arch, ("c5",), weights=str(out)).eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    with torch.no_grad():
        assert torch.allclose(ours(x)["c5"], trunk(x), atol=1e-5)


def test_detectron2_export_names(tmp_path: Path) -> None:
    ckpt, backbone = make_checkpoint(tmp_path, "resnet18")
    out = tmp_path / "backbone.pkl"
    res = CliRunner().invoke(main, ["export", str(ckpt), str(out), "--format", "detectron2"])
    assert res.exit_code == 0, res.output
    with out.open("rb") as f:
        obj = pickle.load(f)
    assert obj["matching_heuristics"] is True
    model = obj["model"]
    assert {"stem.conv1.weight", "stem.conv1.norm.running_mean", "res2.0.conv1.norm.weight",
            "res3.0.shortcut.weight", "res3.0.shortcut.norm.bias", "res5.1.conv2.weight"} <= set(model)  # fmt: skip
    assert len(model) == len(backbone)
    for k, v in backbone.items():
        assert (model[detectron2_name(k)] == v.numpy()).all()
    # Written out by hand from detectron2's convert-torchvision-to-d2.py, not from detectron2_name:
    # the perturbed parameters differ from one another, so a swapped mapping cannot match.
    by_hand = {
        "stem.conv1.weight": "conv1.weight",
        "stem.conv1.norm.weight": "bn1.weight",
        "res2.0.conv1.weight": "layer1.0.conv1.weight",
        "res2.0.conv1.norm.weight": "layer1.0.bn1.weight",
        "res2.0.conv2.norm.bias": "layer1.0.bn2.bias",
        "res3.0.conv1.norm.bias": "layer2.0.bn1.bias",
        "res3.0.shortcut.weight": "layer2.0.downsample.0.weight",
        "res3.0.shortcut.norm.weight": "layer2.0.downsample.1.weight",
        "res4.1.conv2.norm.weight": "layer3.1.bn2.weight",
        "res5.1.conv2.weight": "layer4.1.conv2.weight",
    }
    for d2, tv in by_hand.items():
        assert (model[d2] == backbone[tv].numpy()).all(), (d2, tv)


def test_export_rejects_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    res = CliRunner().invoke(main, ["export", str(bogus), str(tmp_path / "o.pth")])
    assert res.exit_code != 0 and "not a datakit training checkpoint" in res.output
    res = CliRunner().invoke(
        main, ["export", str(tmp_path / "missing.pt"), str(tmp_path / "o.pth")]
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    text = tmp_path / "config.yaml"  # not a torch file at all: torch's own message runs to pages
    text.write_text("method: pixpro\nsteps: 10\n")
    res = CliRunner().invoke(main, ["export", str(text), str(tmp_path / "o.pth")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{text}: not a readable checkpoint" in res.output


def test_unreadable_checkpoint_is_named_by_its_cause_alone(tmp_path: Path) -> None:
    """A last.pt cut short or a file of junk: one line with torch's cause, neither its advice to
    load with weights_only=False nor its text cut off mid-sentence."""
    whole = tmp_path / "whole.pt"
    torch.save({"format": "datakit-train/1", "w": torch.zeros(4096)}, whole)
    cut = tmp_path / "last.pt"
    cut.write_bytes(whole.read_bytes()[:4000])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage\n")
    for path, cause in ((cut, "failed finding central directory"), (junk, "Unsupported operand")):
        res = CliRunner().invoke(main, ["export", str(path), str(tmp_path / "o.pth")])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert f"{path}: not a readable checkpoint (" in res.output and cause in res.output
        assert "weights_only" not in res.output and "miniz" not in res.output, res.output


def test_detectron2_export_as_weights_is_named(tmp_path: Path) -> None:
    from datakit.errors import DatakitError

    ckpt, _ = make_checkpoint(tmp_path, "resnet18")
    out = tmp_path / "d2.pth"
    res = CliRunner().invoke(main, ["export", str(ckpt), str(out), "--format", "detectron2"])
    assert res.exit_code == 0, res.output
    with pytest.raises(DatakitError, match=r"d2\.pth: not a ResNet state dict .*detectron2"):
        build_backbone("resnet18", weights=str(out))


def test_weights_of_another_arch_are_refused(tmp_path: Path) -> None:
    from datakit.errors import DatakitError

    ckpt, _ = make_checkpoint(tmp_path, "resnet18")
    with pytest.raises(DatakitError, match="does not fit resnet50"):
        build_backbone("resnet50", weights=str(ckpt))


def test_an_unwritable_out_fails_before_the_checkpoint_is_read_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """OUT under a file is named at once, even with a checkpoint that does not exist (it is not
    read first); a failed export leaves no file, temporary or folder it made."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = CliRunner().invoke(main, ["export", str(tmp_path / "missing.pt"), str(blocker / "o.pth")])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: {blocker / 'o.pth'}: cannot be written ({blocker} is not a folder)"
    ], res.output
    res = CliRunner().invoke(
        main, ["export", str(tmp_path / "missing.pt"), str(tmp_path / "new" / "o.pth")]
    )
    assert res.exit_code == 1 and "missing.pt" in res.output, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
