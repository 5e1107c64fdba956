"""The C loop's own buffers (sums, norms, checkpoints) on kept blocks of memory
(``backend_c._internal``): a block is lent again only once no run and no graph needs it, so runs
that overlap, graphs kept for a second backward and runs without gradients all give what runs
made one at a time give."""

from __future__ import annotations

import pytest
import torch
from stpn_core import STPN
from stpn_core.stpn import backend_c

DOUBLE = torch.float64
STEPS = 21  # three checkpoint chunks of 8 steps: two stored memories per sample
BATCH = 11  # a whole group of samples and some left over, in either vector width


@pytest.fixture(autouse=True)
def every_buffer_on_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small runs take blocks too, and the pool starts empty."""
    if backend_c.library(DOUBLE) is None:
        pytest.fail("the C loop did not build; a C compiler (cc) is needed for this test")
    monkeypatch.setattr(backend_c, "SPARE_MIN_BYTES", 0)
    monkeypatch.setattr(backend_c, "WORKSPACE_BYTES", 0)
    monkeypatch.setattr(backend_c, "_blocks", [])


def model() -> STPN:
    """The post norm and a binding clamp: every kind of buffer (S, R, R2, checkpoints) is used."""
    torch.manual_seed(0)
    layer = STPN(5, 4, implementation="fast", dtype=DOUBLE, norm_timing="post", clamp=0.05)
    with torch.no_grad():
        layer.weight_gamma.mul_(300)
    return layer


def loss_of(out: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    return (out * weights).sum()


def alone(layer: STPN, x: torch.Tensor) -> list[torch.Tensor]:
    """The parameter gradients of one run made on its own."""
    out, _ = layer(x)
    return list(torch.autograd.grad(loss_of(out), list(layer.parameters())))


def inputs(seed: int) -> torch.Tensor:
    return torch.randn(BATCH, STEPS, 5, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)


def test_overlapping_runs_keep_their_own_buffers() -> None:
    layer, xa, xb = model(), inputs(1), inputs(2)
    want_a, want_b = alone(layer, xa), alone(layer, xb)
    out_a, _ = layer(xa)
    out_b, _ = layer(xb)  # while a's graph needs its buffers
    with torch.no_grad():
        layer(inputs(3))  # a run without gradients in between, of the same shapes
    got_b = torch.autograd.grad(loss_of(out_b), list(layer.parameters()))
    got_a = torch.autograd.grad(loss_of(out_a), list(layer.parameters()))
    for got, want in zip([*got_a, *got_b], [*want_a, *want_b], strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_a_retained_graph_keeps_its_buffers_for_a_second_backward() -> None:
    layer, xa = model(), inputs(1)
    out, _ = layer(xa)
    first = torch.autograd.grad(loss_of(out), list(layer.parameters()), retain_graph=True)
    for seed in (2, 3):  # other runs, each freed after its backward
        alone(layer, inputs(seed))
    second = torch.autograd.grad(loss_of(out), list(layer.parameters()))
    for got, want in zip(second, first, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_freed_buffers_are_reused_and_held_ones_are_not() -> None:
    layer = model()
    alone(layer, inputs(1))
    per_run = len(backend_c._blocks)
    assert per_run == 4  # S, R, R2 and the checkpoints
    for seed in (2, 3, 4):
        alone(layer, inputs(seed))
    assert len(backend_c._blocks) == per_run
    held, _ = layer(inputs(5))  # its graph holds its blocks until it is freed
    alone(layer, inputs(6))
    assert len(backend_c._blocks) == 2 * per_run
    del held
    alone(layer, inputs(7))
    assert len(backend_c._blocks) == 2 * per_run


def test_a_full_pool_falls_back_to_fresh_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_c, "MAX_BLOCKS", 2)
    layer, xa = model(), inputs(1)
    want = alone(layer, xa)
    assert len(backend_c._blocks) == 2
    for got, expected in zip(alone(layer, xa), want, strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
