"""The state contract: every model declares its state once (``state_type``, ``state_shapes``) and
the base class derives the rest. Each derived method is checked against plain construction."""

from __future__ import annotations

import pytest
import torch
from stpn_core import MODELS, STPN, RecurrentModel, build_model
from stpn_core.baselines import RNN, RNNState

D_IN, H, B = 3, 4, 5
EXPECTED_SHAPES = {  # written from each model's definition, not from the code under test
    "stpn": {"h": (H,), "F": (H, D_IN + H), "F_bias": None},
    "stpn_scalar": {"h": (H,), "F": (H, D_IN + H), "F_bias": None},
    "stpnf": {"h": (H,), "F": (H, D_IN), "F_bias": None},
    "stpnf_scalar": {"h": (H,), "F": (H, D_IN), "F_bias": None},
    "rnn": {"h": (H,)},
    "lstm": {"h": (H,), "c": (H,)},
    "fast_weights": {"h": (H,), "A": (H, H)},
    "modplast": {"h": (H,), "hebb": (H, H)},
    "plastic": {"h": (H,), "hebb": (H, H)},
    "hebbff": {"h": (H,), "F": (H, D_IN)},
    "mlp": {"h": (H,)},
}
CASES = [(name, {}) for name in MODELS] + [("stpn", {"plastic_bias": True}),
                                           ("stpn", {"plastic_inputs": "input"})]


def build(name: str, options: dict) -> RecurrentModel:
    return build_model(name, D_IN, H, dtype=torch.float64, **options) if name.startswith("stpn") \
        else build_model(name, D_IN, H, **options).double()


def expected_shapes(name: str, options: dict) -> dict:
    shapes = dict(EXPECTED_SHAPES[name])
    if options.get("plastic_bias"):
        shapes["F_bias"] = (H,)
    if options.get("plastic_inputs") == "input":
        shapes["F"] = (H, D_IN)
    return shapes


def random_state(model: RecurrentModel) -> tuple:
    """A state the model produced itself, from a random sequence."""
    with torch.no_grad():
        return model(torch.randn(B, 6, D_IN, dtype=torch.float64))[1]


def test_cases_cover_every_model() -> None:
    assert set(EXPECTED_SHAPES) == set(MODELS)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_initial_state_is_zeros_of_the_declared_shapes(name: str, options: dict) -> None:
    model = build(name, options)
    state = model.initial_state(B)
    assert isinstance(state, model.state_type)
    assert state._fields == tuple(expected_shapes(name, options))
    for field, shape in expected_shapes(name, options).items():
        value = getattr(state, field)
        if shape is None:
            assert value is None
            continue
        assert value.shape == (B, *shape) and value.dtype == torch.float64
        assert not value.any()
    # the state forward returns has the same layout
    for got, want in zip(random_state(model), state, strict=True):
        assert (got is None) == (want is None)
        assert got is None or got.shape == want.shape
    half = model.initial_state(2, dtype=torch.float32)
    assert all(t is None or (t.dtype == torch.float32 and t.shape[0] == 2) for t in half)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_flatten_round_trip(name: str, options: dict) -> None:
    model = build(name, options)
    state = random_state(model)
    plain = torch.cat([t.reshape(B, -1) for t in state if t is not None], dim=1)
    flat = model.flatten_state(state)
    torch.testing.assert_close(flat, plain, rtol=0, atol=0)
    sizes = [torch.Size(s).numel() for s in expected_shapes(name, options).values() if s]
    assert model.state_size() == sum(sizes) == flat.shape[1]
    restored = model.unflatten_state(flat)
    assert isinstance(restored, model.state_type)
    for got, want in zip(restored, state, strict=True):
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # views of the flat tensor: no copy
        assert flat.data_ptr() <= got.data_ptr() < flat.data_ptr() + flat.nbytes
    x = torch.randn(B, 2, D_IN, dtype=torch.float64)
    torch.testing.assert_close(model(x, restored)[0], model(x, state)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"flat: expected shape \(B, "):
        model.unflatten_state(flat[:, 1:])


@pytest.mark.parametrize(("name", "options"), CASES)
def test_masked_reset_equals_plain_construction(name: str, options: dict) -> None:
    model = build(name, options)
    state = random_state(model)
    mask = torch.tensor([True, False, True, False, False])
    reset = model.reset_state(state, mask)
    assert isinstance(reset, model.state_type)
    zero = model.initial_state(B)
    for got, old, init in zip(reset, state, zero, strict=True):
        if old is None:
            assert got is None
            continue
        want = torch.stack([init[b] if mask[b] else old[b] for b in range(B)])
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert old[0].abs().sum() > 0  # the input state is left as it was
    # a float mask of episode starts (as RL buffers hold them) works the same
    again = model.reset_state(state, mask.double())
    for got, want in zip(again, reset, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)
    # in place: the same tensors, changed
    owned = type(state)(*(None if t is None else t.clone() for t in state))
    in_place = model.reset_state(owned, mask, inplace=True)
    for got, mine, want in zip(in_place, owned, reset, strict=True):
        assert (got is None and want is None) or (got is mine and torch.equal(got, want))


@pytest.mark.parametrize(("name", "options"), CASES)
def test_derived_methods_never_build_a_state(
    name: str, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking, packing, unpacking and resetting read the declaration only."""
    model = build(name, options)
    state = random_state(model)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("initial_state called")

    monkeypatch.setattr(model, "initial_state", refuse)
    model.check_state(state, B, state[0])
    model(torch.randn(B, 2, D_IN, dtype=torch.float64), state)
    model.unflatten_state(model.flatten_state(state))
    model.reset_state(state, torch.ones(B, dtype=torch.bool))
    assert model.state_size() > 0


def test_state_errors_name_the_field() -> None:
    model = STPN(D_IN, H, plastic_bias=True)
    state = model.initial_state(2)
    with pytest.raises(TypeError, match=r"state: expected a STPNState\('h', 'F', 'F_bias'\)"):
        model.check_state(state[:2], 2, state.h)
    with pytest.raises(ValueError, match=r"state.F: expected shape \(2, 4, 7\)"):
        model.check_state(state._replace(F=state.F[:, :, :6]), 2, state.h)
    with pytest.raises(TypeError, match="state.h: expected torch.float64"):
        model.check_state(state, 2, state.h.double())
    with pytest.raises(ValueError, match="state.F_bias: expected None"):
        STPN(D_IN, H).check_state(state, 2, state.h)


def test_a_declaration_must_name_the_state_fields() -> None:
    class Misdeclared(RNN):
        def state_shapes(self) -> dict:
            return {"hidden": (self.hidden_size,)}

    assert RNN.state_type is RNNState
    with pytest.raises(TypeError, match=r"state_shapes: expected the fields \('h',\)"):
        Misdeclared(D_IN, H).initial_state(1)
