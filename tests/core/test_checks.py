"""Input checks every model shares: empty sequences, non-finite states, NumPy integers as sizes,
and the ``STPN_DISABLE_NATIVE`` switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stpn_core import MODELS, STPN, build_model, hidden_size_for_budget, parameters_with_heads
from stpn_core.base import check_positive_int
from stpn_core.cli import env_flag
from stpn_core.stpn import backend_c


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["forward", "energy"])
def test_empty_sequence_is_refused_clearly(name: str, method: str) -> None:
    model = build_model(name, 3, 4)
    with pytest.raises(ValueError, match="x: expected at least one time step"):
        getattr(model, method)(torch.randn(2, 0, 3))


def test_empty_sequence_time_major() -> None:
    model = STPN(3, 4, batch_first=False)
    with pytest.raises(ValueError, match="x: expected at least one time step.*\\(T, B, I\\)"):
        model(torch.randn(0, 2, 3))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_state_is_refused(name: str, bad: float) -> None:
    model = build_model(name, 3, 4)
    x = torch.randn(2, 5, 3)
    _, state = model(x)
    for field, value in zip(state._fields, state, strict=True):
        if value is None:
            continue
        broken = value.detach().clone()
        broken.view(-1)[-1] = bad
        with pytest.raises(ValueError, match=f"state.{field}: contains NaN or infinite"):
            model(x, state._replace(**{field: broken}))


def test_numpy_integers_are_sizes() -> None:
    head = np.int64(4)
    assert check_positive_int("n", head) == 4 and type(check_positive_int("n", head)) is int
    got = hidden_size_for_budget("stpn", 17, 12_300, head_sizes=(head, np.int32(1)))
    assert got == hidden_size_for_budget("stpn", 17, 12_300, head_sizes=(4, 1))
    assert parameters_with_heads("lstm", 17, np.int64(47), head_sizes=(head,)) == (
        parameters_with_heads("lstm", 17, 47, head_sizes=(4,))
    )


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, np.float64(2.0), "2"])
def test_bools_floats_and_strings_are_not_sizes(value: object) -> None:
    with pytest.raises(TypeError, match="n: expected a positive int"):
        check_positive_int("n", value)


@pytest.mark.parametrize("value", [0, np.int64(-3)])
def test_sizes_below_one_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="n: expected a positive int"):
        check_positive_int("n", value)


@pytest.fixture
def fresh_library():
    """Clear the cached C library before and after, so the switch is read anew."""
    backend_c.library.cache_clear()
    yield
    backend_c.library.cache_clear()


@pytest.mark.parametrize(("value", "disabled"), [
    ("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False),
])
def test_disable_native_reads_true_and_false_words(
    monkeypatch: pytest.MonkeyPatch, fresh_library: None, value: str, disabled: bool
) -> None:
    monkeypatch.setenv("STPN_DISABLE_NATIVE", value)
    assert env_flag("STPN_DISABLE_NATIVE") is disabled
    assert (backend_c.library(torch.float64) is None) is disabled


def test_disable_native_refuses_other_words(
    monkeypatch: pytest.MonkeyPatch, fresh_library: None
) -> None:
    monkeypatch.setenv("STPN_DISABLE_NATIVE", "maybe")
    with pytest.raises(ValueError, match="STPN_DISABLE_NATIVE: expected .*got 'maybe'"):
        backend_c.library(torch.float64)


@pytest.mark.parametrize("name", ["stpn", "stpnf"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("steps", [1, 40])
def test_non_finite_memory_is_refused_without_gradients(name: str, bad: float, steps: int) -> None:
    """Without gradients, one step or many: a bad value in any row of F is found, also where
    every input is zero (NaN·0 and ∞·0 would vanish from a check that multiplied)."""
    model = build_model(name, 3, 4)
    x = torch.zeros(2, steps, 3)
    with torch.no_grad():
        state = model.initial_state(2)
        for index in (0, state.F[0].numel() - 1):
            broken = state.F.clone()
            broken[1].view(-1)[index] = bad
            with pytest.raises(ValueError, match="state.F: contains NaN or infinite"):
                model(x, state._replace(F=broken))
        model(x, state._replace(F=torch.full_like(state.F, 3e38)))  # huge but finite: accepted
