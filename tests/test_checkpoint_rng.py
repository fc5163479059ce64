"""The host RNG states of a checkpoint: saved, loaded weights-only, and restored exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint


def draws() -> tuple[list[float], float, list[float]]:
    return torch.rand(4).tolist(), random.random(), np.random.rand(4).tolist()


@pytest.fixture(autouse=True)
def _keep_global_rngs():  # type: ignore[no-untyped-def]
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    yield
    torch.set_rng_state(saved[0]), random.setstate(saved[1]), np.random.set_state(saved[2])


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    draws()  # states part-way through their streams
    np.random.randn()  # numpy's cached Gaussian half: has_gauss and gauss must come back too
    checkpoint.save(tmp_path / "last.pt", {"rng": checkpoint.rng_state()})
    want = draws() + (np.random.randn(),)
    draws()  # move every stream on
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    checkpoint.set_rng_state(state["rng"])
    assert draws() + (np.random.randn(),) == want
