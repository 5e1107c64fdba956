"""Baselines: energies worked out by hand on tiny inputs (docs/model.md §4.2), initialisation
(docs/model.md §1.2, §2.2, §3) and the behaviour each option stands for."""

from __future__ import annotations

import math

import pytest
import torch
from stpn_core.baselines import (
    LSTM,
    RNN,
    DifferentiablePlasticity,
    FastWeights,
    FastWeightsState,
    HebbFF,
    PlasticityState,
)
from stpn_core.registry import count_parameters

DOUBLE = torch.float64


def tensor(values):
    return torch.tensor(values, dtype=DOUBLE)


def sigmoid(a):
    return 1 / (1 + math.exp(-a))


def test_rnn_energy_by_hand():
    model = RNN(1, 1).to(DOUBLE)
    with torch.no_grad():
        model.weight.copy_(tensor([[0.5, -2.0]]))
        model.bias.fill_(0.1)
    energy = model.energy(tensor([[[1.0], [2.0]]]))
    h1 = math.tanh(0.5 * 1.0 + 0.1)
    # step 0: v = [1, 0] -> 0.5·1; step 1: v = [2, h1] -> 0.5·4 + 2·h1²
    assert energy.flatten().tolist() == pytest.approx([0.5, 2.0 + 2.0 * h1**2], abs=1e-14)


def test_lstm_energy_by_hand_sums_the_four_gate_rows():
    model = LSTM(1, 1).to(DOUBLE)
    with torch.no_grad():
        model.lstm.weight_ih_l0.copy_(tensor([[0.1], [-0.2], [0.3], [-0.4]]))
        model.lstm.weight_hh_l0.copy_(tensor([[0.5], [0.6], [-0.7], [0.8]]))
        model.lstm.bias_ih_l0.zero_()
        model.lstm.bias_hh_l0.zero_()
    energy = model.energy(tensor([[[1.0], [2.0]]]))
    c1 = sigmoid(0.1) * math.tanh(0.3)  # forget gate meets c0 = 0
    h1 = sigmoid(-0.4) * math.tanh(c1)
    # step 0: 1²·(0.1+0.2+0.3+0.4), h0 = 0; step 1: 2²·1.0 + h1²·(0.5+0.6+0.7+0.8)
    assert energy.flatten().tolist() == pytest.approx([1.0, 4.0 + 2.6 * h1**2], abs=1e-14)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_fast_weights_energy_by_hand(inner_steps):
    """H = 1, so the LayerNorm returns its bias β and every inner state is tanh(β)."""
    model = FastWeights(1, 1, inner_steps=inner_steps).to(DOUBLE)
    with torch.no_grad():
        model.weight.copy_(tensor([[0.5, -1.0]]))
        model.bias.zero_()
        model.layer_norm.bias.fill_(0.3)
    energy = model.energy(tensor([[[1.0], [2.0]]]))
    z = math.tanh(0.3)
    # step 0: A_0 = 0, v = [1, 0] -> 0.5. Step 1: A_1 = 0.9·0 + 0.5·z², v = [2, z]
    # -> 0.5·4 + 1·z² plus |A_1|·z² for each inner step.
    step1 = 2.0 + z**2 + inner_steps * (0.5 * z**2) * z**2
    assert energy.flatten().tolist() == pytest.approx([0.5, step1], abs=1e-14)


@pytest.mark.parametrize("mode", ["neuromodulated", "plastic"])
def test_plasticity_energy_by_hand(mode):
    model = DifferentiablePlasticity(1, 1, mode=mode, dtype=DOUBLE)
    with torch.no_grad():
        model.i2h.weight.fill_(0.5)
        model.i2h.bias.zero_()
        model.w.fill_(0.2)
        model.alpha.fill_(0.4)
        if mode == "neuromodulated":
            model.h2DA.weight.fill_(1.0)
            model.h2DA.bias.zero_()
    start = PlasticityState(tensor([[0.3]]), tensor([[[0.5]]]))
    energy = model.energy(tensor([[[1.0], [2.0]]]), start)
    # step 0: 0.5·1² + |0.2 + 0.4·0.5|·0.3²
    h1 = math.tanh(0.5 + (0.2 + 0.4 * 0.5) * 0.3)
    modulation = math.tanh(h1) if mode == "neuromodulated" else 0.01
    hebb1 = 0.5 + modulation * h1 * 0.3
    step1 = 0.5 * 4.0 + abs(0.2 + 0.4 * hebb1) * h1**2
    assert energy.flatten().tolist() == pytest.approx([0.5 + 0.4 * 0.09, step1], abs=1e-14)


@pytest.mark.parametrize("anti_hebbian", [False, True])
def test_hebbff_energy_by_hand(anti_hebbian):
    model = HebbFF(2, 1, anti_hebbian=anti_hebbian, dtype=DOUBLE)
    with torch.no_grad():
        model.weight.copy_(tensor([[0.5, -1.0]]))
        model.bias.zero_()
    energy = model.energy(tensor([[[1.0, 2.0], [-1.0, 1.0]]]))
    h1 = sigmoid(0.5 - 2.0)
    F1 = [-5.0 * h1 * 1.0, -5.0 * h1 * 2.0]  # λ·0 + γ·h1·x0, γ = −5/H = −5
    step1 = abs(0.5 + F1[0]) * 1.0 + abs(-1.0 + F1[1]) * 1.0
    assert energy.flatten().tolist() == pytest.approx([0.5 + 4.0, step1], abs=1e-12)


def test_rnn_initialisations():
    uniform = RNN(16, 25)
    assert uniform.weight.abs().max() <= 0.2 and uniform.bias.abs().max() <= 0.2
    assert uniform.weight.abs().max() > 0.15  # spread over the whole U(±1/√H)
    miconi = RNN(16, 25, init="miconi")
    recurrent = miconi.weight[:, 16:]
    assert recurrent.min() >= 0 and recurrent.max() < 0.01
    assert miconi.weight[:, :16].abs().max() <= 0.25 and miconi.weight[:, :16].min() < -0.2
    assert miconi.bias.abs().max() <= 0.25
    assert count_parameters(RNN(37, 20)) == 20 * 57 + 20  # one weight, one bias


def test_fast_weights_layer_norm_init_and_fixed_plasticity():
    model = FastWeights(5, 16)
    gain = model.layer_norm.weight
    assert gain.abs().max() <= 0.25 and gain.min() < 0  # U(±1/√H), not ones
    standard = FastWeights(5, 16, layer_norm_init="standard")
    assert torch.equal(standard.layer_norm.weight, torch.ones(16))
    assert torch.equal(standard.layer_norm.bias, torch.zeros(16))
    assert (model.decay.item(), model.rate.item()) == pytest.approx((0.9, 0.5))
    assert count_parameters(model) == 16 * 21 + 16 + 2 * 16  # λ, γ fixed: buffers
    assert "decay" in model.state_dict()


def test_fast_weights_single_update_per_step():
    """A after one step from (h, A) is exactly 0.9·A + 0.5·h hᵀ (no second update)."""
    model = FastWeights(2, 3).to(DOUBLE)
    h, A = torch.randn(1, 3, dtype=DOUBLE), torch.randn(1, 3, 3, dtype=DOUBLE)
    _, final = model(torch.randn(1, 1, 2, dtype=DOUBLE), FastWeightsState(h, A))
    torch.testing.assert_close(final.A, 0.9 * A + 0.5 * h.unsqueeze(-1) * h.unsqueeze(-2))


def test_fast_weights_learned_plasticity_receives_gradients():
    model = FastWeights(2, 3, learn_plasticity=True, decay=0.8, rate=0.3)
    assert count_parameters(model) == count_parameters(FastWeights(2, 3)) + 2
    assert (model.decay.item(), model.rate.item()) == pytest.approx((0.8, 0.3))
    out, _ = model(torch.randn(4, 5, 2))
    out.square().sum().backward()
    assert model.decay.grad.abs() > 0 and model.rate.grad.abs() > 0


def test_plasticity_initialisation_and_modes():
    neuromodulated = DifferentiablePlasticity(17, 73)
    for tensor_ in (neuromodulated.w, neuromodulated.alpha):
        assert tensor_.min() >= 0 and tensor_.max() < 0.01
    assert count_parameters(neuromodulated) == 17 * 73 + 73 + 2 * 73**2 + 73 + 1
    plastic = DifferentiablePlasticity(17, 73, mode="plastic")
    assert plastic.eta.item() == pytest.approx(0.01) and not hasattr(plastic, "h2DA")
    assert count_parameters(plastic) == 17 * 73 + 73 + 2 * 73**2 + 1


def test_plasticity_clamp_bounds_the_trace():
    model = DifferentiablePlasticity(3, 4, mode="plastic", clamp=0.05)
    with torch.no_grad():
        model.eta.fill_(5.0)
    _, state = model(torch.randn(2, 6, 3))
    assert state.hebb.abs().max().item() == pytest.approx(0.05)
    unclamped = DifferentiablePlasticity(3, 4, mode="plastic", clamp=None)
    unclamped.load_state_dict(model.state_dict())
    _, free = unclamped(torch.randn(2, 6, 3))
    assert free.hebb.abs().max() > 0.05


def test_hebbff_initialisation_and_sign():
    for anti_hebbian in (False, True):
        model = HebbFF(16, 26, anti_hebbian=anti_hebbian)
        assert model.decay.item() == pytest.approx(0.99)
        assert model.rate.item() == pytest.approx(-5 / 26)
        assert model.weight.abs().max() <= 0.25 and model.weight.min() < -0.2
        assert count_parameters(model) == 16 * 26 + 26 + 2
    forced = HebbFF(16, 26, anti_hebbian=True)
    free = HebbFF(16, 26)
    with torch.no_grad():
        forced.gamma_raw.fill_(2.0)
        free.gamma_raw.fill_(2.0)
    assert forced.rate.item() == pytest.approx(-math.exp(2.0))  # negative whatever the raw value
    assert free.rate.item() == pytest.approx(2.0)  # unforced: Hebbian sign allowed
