"""STPN (cell, layer, feed-forward): equations, options, gradients, state, energy, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from stpn_core import STPN, STPNCell, STPNLinear, STPNState
from stpn_core.base import check_sequence

DOUBLE = torch.float64


def plain_stpn(model: STPN, x: torch.Tensor, h: torch.Tensor, F: torch.Tensor, Fb=None):
    """An independent plain loop over samples and steps, written from docs/model.md §1 with 2-D
    matrices.

    Returns the outputs ``(B, T, H)`` and the final ``(h, F, Fb)``.
    """
    W, b = model.weight, model.bias
    H = model.hidden_size
    cols = model.plastic_columns
    lam = model.weight_lambda.expand(H, cols.stop - cols.start)
    gam = model.weight_gamma.expand(H, cols.stop - cols.start)
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}.get(
        model.activation, lambda a: a
    )
    outputs = []
    finals_h, finals_F, finals_Fb = [], [], []
    for s in range(x.shape[0]):
        hs, Fs = h[s], F[s]
        Fbs = None if Fb is None else Fb[s]
        out_s = []
        for t in range(x.shape[1]):
            v = torch.cat([x[s, t], hs]) if model.recurrent else x[s, t]
            F_full = torch.zeros_like(W)
            F_full[:, cols] = Fs
            if model.norm == "G":
                norms = torch.sqrt(((W + F_full) ** 2).sum(1, keepdim=True)) + 1e-16
                G = (W + F_full) / norms
            elif model.norm == "F":
                norms = torch.sqrt((F_full[:, cols] ** 2).sum(1, keepdim=True)) + 1e-16
                G = W + F_full / norms
            else:
                norms, G = None, W + F_full
            a = G @ v
            if b is not None:
                a = a + b + (0 if Fbs is None else Fbs)
            h_new = act(a)
            u = (
                v
                if model.presynaptic == "previous"
                else (torch.cat([x[s, t], h_new]) if model.recurrent else x[s, t])
            )
            u = u[cols]
            mem = Fs / norms if (model.norm_timing == "pre" and norms is not None) else Fs
            if model.rule == "hebb":
                delta = torch.outer(h_new, u)
            else:
                delta = torch.outer(h_new, u - h_new @ mem)
            if model.update == "stp":
                new = lam * mem + gam * delta
            else:
                new = lam * (mem + gam * delta)
            if model.clamp is not None:
                new = new.clamp(-model.clamp, model.clamp)
            if model.norm_timing == "post":
                full = torch.zeros_like(W)
                full[:, cols] = new
                basis = W + full if model.norm == "G" else full[:, cols]
                new = new / (torch.sqrt((basis**2).sum(1, keepdim=True)) + 1e-16)
            if Fbs is not None:
                Fbs = model.bias_lambda * Fbs + model.bias_gamma * h_new
                if model.clamp is not None:
                    Fbs = Fbs.clamp(-model.clamp, model.clamp)
            hs, Fs = h_new, new
            out_s.append(h_new)
        outputs.append(torch.stack(out_s))
        finals_h.append(hs)
        finals_F.append(Fs)
        finals_Fb.append(Fbs)
    Fb_out = None if Fb is None else torch.stack(finals_Fb)
    return torch.stack(outputs), (torch.stack(finals_h), torch.stack(finals_F), Fb_out)


OPTIONS = [
    {},
    {"per_synapse": False},
    {"rule": "oja"},
    {"update": "prompt_decay"},
    {"norm": "F"},
    {"norm": "none"},
    {"norm_timing": "post", "clamp": 1.0},
    {"norm": "F", "norm_timing": "post"},
    {"clamp": 0.05},
    {"plastic_inputs": "input"},
    {"plastic_inputs": "hidden"},
    {"plastic_bias": True},
    {"plastic_bias": True, "clamp": 0.3, "per_synapse": False},
    {"presynaptic": "current"},
    {"activation": "sigmoid"},
    {"activation": "relu"},
    {"activation": "identity", "norm": "none", "clamp": 2.0},
]


def make(cls=STPN, input_size=3, hidden_size=4, **options):
    model = cls(input_size, hidden_size, **options).to(DOUBLE)
    with torch.no_grad():  # large Γ so that the plastic memory matters within a few steps
        model.weight_gamma.mul_(500.0)
        if getattr(model, "plastic_bias", False):
            model.bias_gamma.mul_(500.0)
    return model


def random_state(model: STPN, batch: int) -> STPNState:
    zero = model.initial_state(batch)
    return STPNState(
        torch.randn_like(zero.h) * 0.5,
        torch.randn_like(zero.F) * 0.3,
        None if zero.F_bias is None else torch.randn_like(zero.F_bias) * 0.3,
    )


def cases(options_list):
    """Every option set for STPN, and for STPNLinear all but hidden-only plasticity."""
    return [
        pytest.param(cls, options, id=f"{cls.__name__}-" + option_id(options))
        for cls in (STPN, STPNLinear)
        for options in options_list
        if not (cls is STPNLinear and options.get("plastic_inputs") == "hidden")
    ]


def option_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "default"


@pytest.mark.parametrize(("cls", "options"), cases(OPTIONS))
def test_matches_plain_loop(cls, options):
    model = make(cls, **options)
    x = torch.randn(2, 5, 3, dtype=DOUBLE)
    for state in (None, random_state(model, 2)):
        start = state or model.initial_state(2)
        out, final = model(x, state)
        want_out, (want_h, want_F, want_Fb) = plain_stpn(model, x, *start)
        torch.testing.assert_close(out, want_out, atol=1e-12, rtol=0)
        torch.testing.assert_close(final.h, want_h, atol=1e-12, rtol=0)
        torch.testing.assert_close(final.F, want_F, atol=1e-12, rtol=0)
        if want_Fb is not None:
            torch.testing.assert_close(final.F_bias, want_Fb, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("cls", "options"), cases(OPTIONS))
def test_gradcheck(cls, options):
    model = make(cls, input_size=2, hidden_size=3, **options)
    x = torch.randn(2, 3, 2, dtype=DOUBLE, requires_grad=True)
    state = random_state(model, 2)
    h0 = state.h.clone().requires_grad_()
    F0 = state.F.clone().requires_grad_()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]

    def run(x, h0, F0, *values):
        replaced = dict(zip(names, values, strict=True))
        start = STPNState(h0, F0, state.F_bias)
        out, final = torch.func.functional_call(model, replaced, (x, start))
        return out, final.F

    assert torch.autograd.gradcheck(run, (x, h0, F0, *params))


def test_default_step_worked_by_hand():
    """I=2, H=1, every number chosen so the arithmetic can be done on paper."""
    cell = STPNCell(2, 1).to(DOUBLE)
    with torch.no_grad():
        cell.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]], dtype=DOUBLE))
        cell.bias.fill_(0.1)
        cell.weight_lambda.fill_(0.5)
        cell.weight_gamma.copy_(torch.tensor([[1.0, 2.0, 3.0]], dtype=DOUBLE))
    x = torch.tensor([[1.0, 2.0]], dtype=DOUBLE)
    start = STPNState(torch.tensor([[0.5]], dtype=DOUBLE), torch.zeros(1, 1, 3, dtype=DOUBLE))
    state = cell(x, start)
    # v = [1, 2, 0.5]; ||W|| = sqrt(0.25 + 1 + 4); W·v = 0.5 - 2 + 1 = -0.5
    n1 = math.sqrt(5.25)
    h1 = math.tanh(-0.5 / n1 + 0.1)
    assert state.h.item() == pytest.approx(h1, abs=1e-14)
    # F was zero, so F1 = Γ ⊙ (h1 · v)
    expected_F1 = [1.0 * h1 * 1.0, 2.0 * h1 * 2.0, 3.0 * h1 * 0.5]
    assert state.F.flatten().tolist() == pytest.approx(expected_F1, abs=1e-14)

    # Second step, input [0, 1]: v = [0, 1, h1]; G = W + F1; F1 is rescaled by ||G|| before update.
    x2 = torch.tensor([[0.0, 1.0]], dtype=DOUBLE)
    state2 = cell(x2, state)
    G = [0.5 + expected_F1[0], -1.0 + expected_F1[1], 2.0 + expected_F1[2]]
    n2 = math.sqrt(sum(g * g for g in G))
    h2 = math.tanh((G[1] * 1.0 + G[2] * h1) / n2 + 0.1)
    assert state2.h.item() == pytest.approx(h2, abs=1e-14)
    v2 = [0.0, 1.0, h1]
    gammas = [1.0, 2.0, 3.0]
    expected_F2 = [
        0.5 * f / n2 + g * h2 * v for f, g, v in zip(expected_F1, gammas, v2, strict=True)
    ]
    assert state2.F.flatten().tolist() == pytest.approx(expected_F2, abs=1e-14)

    # Energy of step 2: sum_j |G_j / n2| · v_j², from the state before the step.
    expected_energy = sum(abs(g / n2) * v * v for g, v in zip(G, v2, strict=True))
    assert cell.energy(x2, state).item() == pytest.approx(expected_energy, abs=1e-14)


def test_unnormalised_feed_forward_by_hand():
    """STPNLinear without normalisation: h = tanh(W x + b + F x); the bias is applied."""
    layer = STPNLinear(2, 1, norm="none", clamp=0.1).to(DOUBLE)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.2]], dtype=DOUBLE))
        layer.bias.fill_(0.05)
        layer.weight_lambda.fill_(0.9)
        layer.weight_gamma.fill_(1.0)
    x = torch.tensor([[[1.0, -1.0], [2.0, 0.5]]], dtype=DOUBLE)
    out, state = layer(x)
    h1 = math.tanh(0.3 + 0.2 + 0.05)
    F1 = [min(h1 * 1.0, 0.1), max(h1 * -1.0, -0.1)]  # clamped to ±0.1
    h2 = math.tanh(0.3 * 2 - 0.2 * 0.5 + 0.05 + F1[0] * 2 + F1[1] * 0.5)
    assert out.flatten().tolist() == pytest.approx([h1, h2], abs=1e-14)
    F2 = [max(-0.1, min(0.1, 0.9 * F1[0] + h2 * 2.0)), max(-0.1, min(0.1, 0.9 * F1[1] + h2 * 0.5))]
    assert state.F.flatten().tolist() == pytest.approx(F2, abs=1e-14)
    # Energy at step 1 from F1: |W + F1| · x²
    e = abs(0.3 + F1[0]) * 4 + abs(-0.2 + F1[1]) * 0.25
    assert layer.energy(x)[0, 1].item() == pytest.approx(e, abs=1e-14)


def test_normalised_feed_forward_uses_its_bias():
    layer = STPNLinear(3, 2)
    out, _ = layer(torch.randn(4, 5, 3))
    out.sum().backward()
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def test_chunks_continue_the_sequence():
    model = make(STPN, norm_timing="post", clamp=1.0, plastic_bias=True)
    x = torch.randn(3, 8, 3, dtype=DOUBLE)
    whole, final = model(x)
    first, state = model(x[:, :5])
    second, final2 = model(x[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-13, rtol=0)
    for a, b in zip(final, final2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)


def test_cell_steps_equal_layer():
    layer = make(STPN)
    cell = STPNCell(3, 4).to(DOUBLE)
    cell.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 3, dtype=DOUBLE)
    out, final = layer(x)
    state = None
    for t in range(6):
        state = cell(x[:, t], state)
        torch.testing.assert_close(state.h, out[:, t], atol=1e-13, rtol=0)
    torch.testing.assert_close(state.F, final.F, atol=1e-13, rtol=0)


def test_time_major_layout():
    model = make(STPN)
    batch_major = STPN(3, 4, batch_first=False).to(DOUBLE)
    batch_major.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 3, dtype=DOUBLE)
    out, _ = model(x)
    out_t, _ = batch_major(x.transpose(0, 1))
    torch.testing.assert_close(out_t.transpose(0, 1), out)


def test_parameter_names_shapes_and_init():
    model = STPN(37, 11)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "weight": (11, 48),
        "bias": (11,),
        "weight_lambda": (11, 48),
        "weight_gamma": (11, 48),
    }
    bound = 1 / math.sqrt(11)
    assert model.weight.abs().max() <= bound and model.bias.abs().max() <= bound
    assert 0 <= model.weight_lambda.min() and model.weight_lambda.max() <= 1
    assert model.weight_gamma.abs().max() <= 0.001 * bound
    assert sum(p.numel() for p in model.parameters()) == 3 * 11 * 48 + 11
    scalar = STPN(37, 11, per_synapse=False)
    assert scalar.weight_lambda.shape == () and scalar.weight_gamma.shape == ()
    hidden_only = STPN(37, 11, plastic_inputs="hidden")
    assert hidden_only.weight_lambda.shape == (11, 11)
    assert hidden_only.initial_state(2).F.shape == (2, 11, 11)
    assert STPNLinear(17, 5).weight.abs().max() <= 1 / math.sqrt(17)


def test_custom_init_ranges():
    model = STPN(5, 6, lambda_init=(0.9, 0.95), gamma_init_scale=0.1)
    assert 0.9 <= model.weight_lambda.min() and model.weight_lambda.max() <= 0.95
    assert model.weight_gamma.abs().max() <= 0.1 / math.sqrt(6)
    assert model.weight_gamma.abs().max() > 0.001 / math.sqrt(6)


def test_scalar_equals_uniform_per_synapse():
    scalar = make(STPN, per_synapse=False)
    full = make(STPN)
    with torch.no_grad():
        full.weight.copy_(scalar.weight)
        full.bias.copy_(scalar.bias)
        full.weight_lambda.fill_(scalar.weight_lambda.item())
        full.weight_gamma.fill_(scalar.weight_gamma.item())
    x = torch.randn(2, 6, 3, dtype=DOUBLE)
    torch.testing.assert_close(scalar(x)[0], full(x)[0])


def test_input_only_plasticity_equals_zero_rate_on_hidden_columns():
    input_only = make(STPN, plastic_inputs="input")
    full = make(STPN)
    with torch.no_grad():
        full.weight.copy_(input_only.weight)
        full.bias.copy_(input_only.bias)
        full.weight_lambda[:, :3] = input_only.weight_lambda
        full.weight_gamma[:, :3] = input_only.weight_gamma
        full.weight_gamma[:, 3:] = 0.0
    x = torch.randn(2, 6, 3, dtype=DOUBLE)
    out, state = input_only(x)
    out_full, state_full = full(x)
    torch.testing.assert_close(out, out_full)
    torch.testing.assert_close(state.F, state_full.F[:, :, :3])


def test_clamp_bounds_memory():
    model = make(STPN, clamp=0.01)
    _, state = model(torch.randn(2, 10, 3, dtype=DOUBLE) * 3)
    assert state.F.abs().max() <= 0.01 + 1e-15


def test_plastic_bias_memory_follows_postsynaptic_activity():
    model = make(STPN, plastic_bias=True)
    x = torch.randn(2, 1, 3, dtype=DOUBLE)
    out, state = model(x)
    torch.testing.assert_close(state.F_bias, model.bias_gamma * out[:, 0])
    names = {n for n, _ in model.named_parameters()}
    assert {"bias_lambda", "bias_gamma"} <= names


def test_state_flattens_and_round_trips():
    model = make(STPN, plastic_bias=True)
    _, state = model(torch.randn(2, 3, 3, dtype=DOUBLE))
    flat = model.flatten_state(state)
    assert flat.shape == (2, model.state_size()) == (2, 4 + 4 * 7 + 4)
    for a, b in zip(model.unflatten_state(flat), state, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="flat"):
        model.unflatten_state(flat[:, 1:])


def test_energy_shape_no_grad_and_start_of_step():
    model = make(STPN)
    x = torch.randn(2, 4, 3, dtype=DOUBLE)
    energy = model.energy(x)
    assert energy.shape == (2, 4) and not energy.requires_grad
    # Step 0 starts from zero memory and zero hidden state: |W/||W|||·x² on the input columns.
    W = model.weight / model.weight.norm(dim=1, keepdim=True)
    expected = (W[:, :3].abs() @ (x[:, 0] ** 2).T).sum(0)
    torch.testing.assert_close(energy[:, 0], expected.detach())


def test_learns_two_pair_associative_recall():
    """A small STPN learns 2-pair retrieval ``k1 v1 k2 v2 ? ? q -> v(q)`` over the 37-symbol
    vocabulary of docs/model.md §5.1 (26 letters, 10 digits, '?') to ≥ 90% (chance 10%)."""
    generator = torch.Generator().manual_seed(0)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.argsort(torch.rand(size, 26, generator=generator), dim=1)[:, :2]
        values = torch.randint(0, 10, (size, 2), generator=generator)
        pick = torch.randint(0, 2, (size,), generator=generator)
        query = keys[torch.arange(size), pick]
        mark = torch.full_like(query, 36)
        symbols = torch.stack(
            [keys[:, 0], values[:, 0] + 26, keys[:, 1], values[:, 1] + 26, mark, mark, query], 1
        )
        return torch.nn.functional.one_hot(symbols, 37).float(), values[torch.arange(size), pick]

    model = STPN(37, 16)
    readout = torch.nn.Linear(16, 10)
    optimiser = torch.optim.Adam([*model.parameters(), *readout.parameters()], lr=1e-2)
    for _ in range(400):
        x, y = batch(128)
        loss = torch.nn.functional.cross_entropy(readout(model(x)[0][:, -1]), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    x, y = batch(2000)
    with torch.no_grad():
        accuracy = (readout(model(x)[0][:, -1]).argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.9, accuracy


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rule": "hebbian"}, ValueError, "rule"),
        ({"update": "decay"}, ValueError, "update"),
        ({"norm": "W"}, ValueError, "norm"),
        ({"norm_timing": "during"}, ValueError, "norm_timing"),
        ({"plastic_inputs": "some"}, ValueError, "plastic_inputs"),
        ({"presynaptic": "next"}, ValueError, "presynaptic"),
        ({"activation": "gelu"}, ValueError, "activation"),
        ({"clamp": -1.0}, ValueError, "clamp"),
        ({"clamp": float("nan")}, ValueError, "clamp"),
        ({"clamp": "1"}, TypeError, "clamp"),
        ({"norm": "none", "norm_timing": "post"}, ValueError, "norm_timing"),
        ({"bias": False, "plastic_bias": True}, ValueError, "plastic_bias"),
        ({"lambda_init": (1.0, 0.0)}, ValueError, "lambda_init"),
        ({"gamma_init_scale": -1}, ValueError, "gamma_init_scale"),
        ({"unknown": 1}, TypeError, "unknown"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        STPN(3, 4, **kwargs)


def test_bad_sizes_and_feed_forward_hidden_plasticity():
    with pytest.raises(ValueError, match="hidden_size"):
        STPN(3, 0)
    with pytest.raises(TypeError, match="input_size"):
        STPN(3.0, 4)
    with pytest.raises(ValueError, match="plastic_inputs"):
        STPNLinear(3, 4, plastic_inputs="hidden")


def test_bad_inputs():
    model = STPN(3, 4)
    with pytest.raises(ValueError, match="3-D"):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(TypeError, match="floating"):
        model(torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.randn(2, 5, 3, dtype=DOUBLE))
    with pytest.raises(ValueError, match="device"):
        model(torch.randn(2, 5, 3, device="meta"))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((2, 5, 3), float("nan")))
    for bad in (float("inf"), float("-inf"), float("nan")):
        x = torch.randn(2, 5, 3)
        x[1, 4, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(x)
    # Finite values whose sum overflows float32 are not refused by the check.
    check_sequence(torch.full((2, 5, 3), 3e38), 3, torch.zeros(1))
    with pytest.raises(TypeError, match="x"):
        model([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="2-D"):
        STPNCell(3, 4)(torch.randn(2, 5, 3))


def test_bad_states():
    model = STPN(3, 4)
    x = torch.randn(2, 5, 3)
    good = model.initial_state(2)
    with pytest.raises(ValueError, match="state.F"):
        model(x, STPNState(good.h, torch.zeros(2, 4, 6)))
    with pytest.raises(ValueError, match="state.h"):
        model(x, model.initial_state(3))
    with pytest.raises(TypeError, match="state"):
        model(x, good.h)
    with pytest.raises(TypeError, match="state.F"):
        model(x, STPNState(good.h, good.F.double()))
    with pytest.raises(ValueError, match="F_bias"):
        model(x, STPNState(good.h, good.F, torch.zeros(2, 4)))
