"""Baselines (RNN, LSTM, FastWeights, DifferentiablePlasticity, HebbFF, MLP) against plain
per-sample loops written from docs/model.md §3/§4.2, float64 gradcheck, state carry-over, layouts
and bad input.

Every option of every baseline appears in ``CASES``, so each runs through every check here.
"""

from __future__ import annotations

import pytest
import torch
from stpn_core.baselines import (
    LSTM,
    MLP,
    RNN,
    DifferentiablePlasticity,
    FastWeights,
    HebbFF,
)
from torch.func import functional_call

DOUBLE = torch.float64

CASES = [
    (RNN, {}),
    (RNN, {"bias": False}),
    (RNN, {"init": "miconi"}),
    (LSTM, {}),
    (LSTM, {"bias": False}),
    (FastWeights, {}),
    (FastWeights, {"bias": False}),
    (FastWeights, {"inner_steps": 3}),
    (FastWeights, {"decay": 0.7, "rate": -0.4}),
    (FastWeights, {"learn_plasticity": True}),
    (FastWeights, {"layer_norm_init": "standard"}),
    (DifferentiablePlasticity, {}),
    (DifferentiablePlasticity, {"bias": False}),
    (DifferentiablePlasticity, {"mode": "plastic"}),
    (DifferentiablePlasticity, {"clamp": 0.4}),
    (DifferentiablePlasticity, {"mode": "plastic", "clamp": None}),
    (HebbFF, {}),
    (HebbFF, {"bias": False}),
    (HebbFF, {"anti_hebbian": True}),
    (MLP, {}),
    (MLP, {"bias": False}),
]


def case_id(cls, options):
    return cls.__name__ + "-" + (",".join(f"{k}={v}" for k, v in options.items()) or "default")


def cases():
    return [pytest.param(cls, options, id=case_id(cls, options)) for cls, options in CASES]


def make(cls, options, input_size=3, hidden_size=4):
    """A float64 model whose parameters are redrawn large enough that every term matters."""
    model = cls(input_size, hidden_size, **options).to(DOUBLE)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name not in ("decay", "rate", "lambda_raw", "gamma_raw"):
                parameter.copy_(torch.randn_like(parameter) * 0.6)
        if isinstance(model, DifferentiablePlasticity) and model.mode == "plastic":
            model.eta.fill_(0.7)  # so the trace moves, and hits the clamp, within a few steps
    return model


def random_state(model, batch):
    return type(model.initial_state(batch))(
        *(torch.randn_like(t) * 0.4 for t in model.initial_state(batch))
    )


# -- plain per-sample references, one step at a time, from the equations of docs/model.md §3 --


def ref_rnn(m, x, h):
    W, b = m.weight, 0 if m.bias is None else m.bias
    v = torch.cat([x, h])
    return (torch.tanh(W @ v + b),), (W.abs() @ v**2).sum()


def ref_lstm(m, x, h, c):
    W_ih, W_hh = m.lstm.weight_ih_l0, m.lstm.weight_hh_l0
    b = m.lstm.bias_ih_l0 + m.lstm.bias_hh_l0 if m.lstm.bias else 0
    i, f, g, o = (W_ih @ x + W_hh @ h + b).chunk(4)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    energy = (W_ih.abs() @ x**2 + W_hh.abs() @ h**2).sum()
    return (torch.sigmoid(o) * torch.tanh(c_new), c_new), energy


def layer_norm(a, gain, shift):
    centred = a - a.mean()
    return centred / torch.sqrt((centred**2).mean() + 1e-5) * gain + shift


def ref_fast_weights(m, x, h, A):
    A = m.decay * A + m.rate * torch.outer(h, h)
    v = torch.cat([x, h])
    p = m.weight @ v + (0 if m.bias is None else m.bias)
    gain, shift = m.layer_norm.weight, m.layer_norm.bias
    inner = torch.tanh(layer_norm(p, gain, shift))
    energy = (m.weight.abs() @ v**2).sum()
    for _ in range(m.inner_steps):
        energy = energy + (A.abs() @ inner**2).sum()
        inner = torch.tanh(layer_norm(p + A @ inner, gain, shift))
    return (inner, A), energy


def ref_plasticity(m, x, h, hebb):
    W_in, b_in = m.i2h.weight, 0 if m.i2h.bias is None else m.i2h.bias
    recurrent = m.w + m.alpha * hebb
    h_new = torch.tanh(W_in @ x + b_in + recurrent @ h)
    if m.mode == "neuromodulated":
        modulation = torch.tanh(m.h2DA.weight[0] @ h_new + m.h2DA.bias[0])
    else:
        modulation = m.eta
    hebb = hebb + modulation * torch.outer(h_new, h)
    if m.clamp is not None:
        hebb = hebb.clamp(-m.clamp, m.clamp)
    energy = (W_in.abs() @ x**2).sum() + (recurrent.abs() @ h**2).sum()
    return (h_new, hebb), energy


def ref_hebbff(m, x, h, F):
    decay = 1 / (1 + torch.exp(-m.lambda_raw))
    rate = -torch.exp(m.gamma_raw) if m.anti_hebbian else m.gamma_raw
    h_new = torch.sigmoid((m.weight + F) @ x + (0 if m.bias is None else m.bias))
    energy = ((m.weight + F).abs() @ x**2).sum()
    return (h_new, decay * F + rate * torch.outer(h_new, x)), energy


def ref_mlp(m, x, h):
    """No memory: the state ``h`` is not read."""
    W, b = m.linear.weight, 0 if m.linear.bias is None else m.linear.bias
    return (torch.tanh(W @ x + b),), (W.abs() @ x**2).sum()


REFERENCES = {
    RNN: ref_rnn,
    LSTM: ref_lstm,
    FastWeights: ref_fast_weights,
    DifferentiablePlasticity: ref_plasticity,
    HebbFF: ref_hebbff,
    MLP: ref_mlp,
}


def plain_loop(model, x, state):
    """Outputs ``(B, T, H)``, final state fields and energies ``(B, T)``, sample by sample."""
    step = REFERENCES[type(model)]
    outputs, finals, energies = [], [], []
    for s in range(x.shape[0]):
        fields = tuple(t[s] for t in state)
        out_s, energy_s = [], []
        for t in range(x.shape[1]):
            fields, energy = step(model, x[s, t], *fields)
            out_s.append(fields[0])
            energy_s.append(energy)
        outputs.append(torch.stack(out_s))
        energies.append(torch.stack(energy_s))
        finals.append(fields)
    stacked = [torch.stack(field) for field in zip(*finals, strict=True)]
    return torch.stack(outputs), stacked, torch.stack(energies)


@pytest.mark.parametrize(("cls", "options"), cases())
def test_matches_plain_loop(cls, options):
    model = make(cls, options)
    x = torch.randn(2, 5, 3, dtype=DOUBLE)
    for state in (None, random_state(model, 2)):
        start = model.initial_state(2) if state is None else state
        out, final = model(x, state)
        want_out, want_final, want_energy = plain_loop(model, x, start)
        torch.testing.assert_close(out, want_out, atol=1e-12, rtol=0)
        for got, want in zip(final, want_final, strict=True):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        torch.testing.assert_close(model.energy(x, state), want_energy, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("cls", "options"), cases())
def test_gradcheck(cls, options):
    """Gradients w.r.t. the input, a non-zero initial state and every parameter."""
    model = make(cls, options, input_size=2, hidden_size=3)
    x = torch.randn(2, 3, 2, dtype=DOUBLE, requires_grad=True)
    state = [t.clone().requires_grad_() for t in random_state(model, 2)]
    names, params = zip(*model.named_parameters(), strict=True)
    kind = type(model.initial_state(1))

    def run(x, *values):
        start = kind(*values[: len(state)])
        replaced = dict(zip(names, values[len(state) :], strict=True))
        out, final = functional_call(model, replaced, (x, start))
        return (out, *final)

    assert torch.autograd.gradcheck(run, (x, *state, *params))


@pytest.mark.parametrize(("cls", "options"), cases())
def test_two_chunks_equal_one_run(cls, options):
    model = make(cls, options)
    x = torch.randn(3, 7, 3, dtype=DOUBLE)
    start = random_state(model, 3)
    whole, final = model(x, start)
    first, middle = model(x[:, :4], start)
    second, final_chunked = model(x[:, 4:], middle)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-12, rtol=0)
    for got, want in zip(final_chunked, final, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    energy = torch.cat([model.energy(x[:, :4], start), model.energy(x[:, 4:], middle)], dim=1)
    torch.testing.assert_close(energy, model.energy(x, start), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("cls", "options"), cases())
def test_time_major_layout(cls, options):
    model = make(cls, options)
    time_major = make(cls, {**options, "batch_first": False})
    time_major.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, 3, dtype=DOUBLE)
    out, final = model(x)
    out_tm, final_tm = time_major(x.transpose(0, 1))
    torch.testing.assert_close(out_tm, out.transpose(0, 1), atol=1e-12, rtol=0)
    for got, want in zip(final_tm, final, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(time_major.energy(x.transpose(0, 1)), model.energy(x))


@pytest.mark.parametrize(("cls", "options"), cases())
def test_energy_is_detached_and_flat_state_round_trips(cls, options):
    model = make(cls, options)
    x = torch.randn(2, 4, 3, dtype=DOUBLE)
    energy = model.energy(x)
    assert energy.shape == (2, 4) and not energy.requires_grad and (energy >= 0).all()
    _, state = model(x)
    restored = model.unflatten_state(model.flatten_state(state))
    for got, want in zip(restored, state, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("cls", list(REFERENCES))
def test_factory_arguments_and_bad_input(cls):
    model = cls(3, 4, dtype=DOUBLE)
    assert all(p.dtype == DOUBLE for p in model.parameters())
    assert all(p.is_meta for p in cls(3, 4, device="meta").parameters())
    good = torch.randn(2, 5, 3, dtype=DOUBLE)
    with pytest.raises(ValueError, match="x: expected a 3-D"):
        model(good[0])
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(2, 5, 4, dtype=DOUBLE))
    with pytest.raises(TypeError, match="x: dtype"):
        model(good.float())
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((2, 5, 3), float("nan"), dtype=DOUBLE))
    state = model.initial_state(2)
    wrong_batch = type(state)(*(t[:1] for t in state))
    with pytest.raises(ValueError, match=rf"state\.{state._fields[0]}: expected shape"):
        model(good, wrong_batch)
    with pytest.raises(ValueError, match=rf"state\.{state._fields[0]}: expected shape"):
        model.energy(good, wrong_batch)
    with pytest.raises(TypeError, match="state: expected"):
        model(good, state[0])
    with pytest.raises(ValueError, match="hidden_size"):
        cls(3, 0)
    with pytest.raises(TypeError, match="input_size"):
        cls(3.0, 4)


@pytest.mark.parametrize(
    ("cls", "options", "error", "message"),
    [
        (RNN, {"bias": 1}, TypeError, "bias: expected True or False"),
        (LSTM, {"batch_first": "yes"}, TypeError, "batch_first: expected True or False"),
        (RNN, {"init": "xavier"}, ValueError, "init: expected one of 'uniform', 'miconi'"),
        (FastWeights, {"inner_steps": 0}, ValueError, "inner_steps"),
        (FastWeights, {"inner_steps": 1.5}, TypeError, "inner_steps"),
        (FastWeights, {"decay": float("nan")}, ValueError, "decay: expected a finite"),
        (FastWeights, {"rate": "0.5"}, TypeError, "rate: expected a number"),
        (FastWeights, {"learn_plasticity": 1}, TypeError, "learn_plasticity: expected True"),
        (FastWeights, {"layer_norm_init": "ones"}, ValueError, "layer_norm_init: expected"),
        (DifferentiablePlasticity, {"mode": "modul"}, ValueError, "mode: expected one of"),
        (DifferentiablePlasticity, {"clamp": 0.0}, ValueError, "clamp: expected a positive"),
        (DifferentiablePlasticity, {"clamp": True}, TypeError, "clamp: expected a number"),
        (HebbFF, {"anti_hebbian": "yes"}, TypeError, "anti_hebbian: expected True"),
        (LSTM, {"proj_size": 2}, TypeError, "proj_size"),
    ],
)
def test_bad_options(cls, options, error, message):
    with pytest.raises(error, match=message):
        cls(3, 4, **options)
