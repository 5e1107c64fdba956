"""Registry: building by name, option checks, parameter counts and the paper's presets (§3.7)."""

from __future__ import annotations

import pytest
import torch
from stpn_core import STPN, STPNLinear
from stpn_core.baselines import LSTM, MLP, RNN, DifferentiablePlasticity, FastWeights, HebbFF
from stpn_core.registry import (
    MODELS,
    PRESET_HEADS,
    build_model,
    count_parameters,
    hidden_size_for_budget,
    model_options,
    paper_preset,
    parameters_with_heads,
)

INPUTS = {"ar": 37, "maze": 17}

# docs/model.md §3.7: trainable parameters of the paper's configurations, task heads included.
SPEC_COUNTS = {
    "ar": {
        "stpn": 2039,
        "rnn": 1937,
        "lstm": 2062,
        "fast_weights": 1977,
        "modplast": 1908,
        "hebbff": 1989,
        "stpn_scalar": 1939,
        "stpnf": 1974,
        "stpnf_scalar": 1989,
    },
    "maze": {
        "stpn": 12215,
        "rnn": 12305,
        "lstm": 12648,
        "modplast": 12416,
        "stpn_h30": 4415,
        "stpn_scalar": 4297,
        "stpnf": 4337,
        "stpnf_scalar": 4170,
        "hebbff": 4170,
    },
}


@pytest.mark.parametrize(
    ("name", "cls", "check"),
    [
        ("stpn", STPN, lambda m: m.per_synapse),
        ("stpn_scalar", STPN, lambda m: not m.per_synapse),
        ("stpnf", STPNLinear, lambda m: m.per_synapse),
        ("stpnf_scalar", STPNLinear, lambda m: not m.per_synapse),
        ("rnn", RNN, lambda m: True),
        ("lstm", LSTM, lambda m: True),
        ("fast_weights", FastWeights, lambda m: True),
        ("modplast", DifferentiablePlasticity, lambda m: m.mode == "neuromodulated"),
        ("plastic", DifferentiablePlasticity, lambda m: m.mode == "plastic"),
        ("hebbff", HebbFF, lambda m: True),
        ("mlp", MLP, lambda m: True),
    ],
)
def test_build_every_model(name, cls, check):
    model = build_model(name, 5, 6)
    assert type(model) is cls and check(model)
    assert (model.input_size, model.hidden_size) == (5, 6)
    out, _ = model(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 6)
    assert set(MODELS) == {"stpn", "stpn_scalar", "stpnf", "stpnf_scalar", "rnn", "lstm"} | {
        "fast_weights",
        "modplast",
        "plastic",
        "hebbff",
        "mlp",
    }


def test_options_reach_the_constructor():
    assert build_model("stpn", 3, 4, norm_timing="post", clamp=1.0).clamp == 1.0
    assert build_model("fast_weights", 3, 4, inner_steps=2).inner_steps == 2
    assert build_model("modplast", 3, 4, clamp=None).clamp is None
    assert build_model("rnn", 3, 4, batch_first=False).batch_first is False
    assert "anti_hebbian" in model_options("hebbff") and "bias" in model_options("lstm")
    assert "per_synapse" in model_options("stpn") and "per_synapse" not in model_options(
        "stpn_scalar"
    )


def test_unknown_name_and_options():
    with pytest.raises(ValueError, match="name: expected one of stpn, stpn_scalar.*hebbff"):
        build_model("gru", 3, 4)
    with pytest.raises(ValueError, match="layers: not an option of 'rnn'; valid options: bias"):
        build_model("rnn", 3, 4, layers=2)
    with pytest.raises(ValueError, match="per_synapse: fixed to False by the model name"):
        build_model("stpn_scalar", 3, 4, per_synapse=True)
    with pytest.raises(ValueError, match="mode: fixed to 'plastic'"):
        build_model("plastic", 3, 4, mode="neuromodulated")
    with pytest.raises(ValueError, match="init: expected one of"):
        build_model("rnn", 3, 4, init="orthogonal")  # a bad value, checked by the model


def test_count_parameters_counts_trainable_only():
    model = torch.nn.Linear(3, 2)
    assert count_parameters(model) == 8
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 6


@pytest.mark.parametrize("task", ["ar", "maze"])
def test_presets_match_the_paper_parameter_counts(task):
    for key, expected in SPEC_COUNTS[task].items():
        preset = paper_preset(task, key)
        model = preset.build(INPUTS[task])
        heads = sum(preset.hidden_size * k + k for k in PRESET_HEADS[task])
        total = count_parameters(model) + heads
        assert abs(total - expected) <= 0.02 * expected, (task, key, total, expected)
        assert total == parameters_with_heads(
            preset.model,
            INPUTS[task],
            preset.hidden_size,
            head_sizes=PRESET_HEADS[task],
            **preset.options,
        )


def test_preset_contents():
    maze_stpn = paper_preset("maze", "stpn")
    assert maze_stpn == ("stpn", 55, {"norm_timing": "post", "clamp": 1.0})
    assert paper_preset("maze", "stpn_h30") == ("stpn", 30, {})
    assert paper_preset("ar", "hebbff").options == {"anti_hebbian": True}
    assert paper_preset("maze", "rnn").options == {"init": "miconi"}
    maze_stpn.options["clamp"] = 5.0  # a caller's copy: the table itself is unchanged
    assert paper_preset("maze", "stpn").options["clamp"] == 1.0
    with pytest.raises(ValueError, match="task: expected one of ar, maze"):
        paper_preset("pong", "stpn")
    with pytest.raises(ValueError, match="model: expected one of .*stpn_h30"):
        paper_preset("maze", "fast_weights")


@pytest.mark.parametrize(
    ("name", "inputs", "budget", "heads"),
    [("rnn", 37, 2039, (37,)), ("stpn", 17, 12215, (4, 1)), ("lstm", 17, 12305, (4, 1))],
)
def test_hidden_size_for_budget_is_the_closest(name, inputs, budget, heads):
    size = hidden_size_for_budget(name, inputs, budget, head_sizes=heads)

    def miss(h):
        return abs(parameters_with_heads(name, inputs, h, head_sizes=heads) - budget)

    assert miss(size) <= miss(size - 1) and miss(size) <= miss(size + 1)


def test_hidden_size_for_budget_paper_sizes_and_errors():
    assert hidden_size_for_budget("stpn", 37, 2039, head_sizes=(37,)) == 11
    assert hidden_size_for_budget("stpn", 17, 12215, head_sizes=(4, 1)) == 55
    assert hidden_size_for_budget("hebbff", 17, 4170, head_sizes=(4, 1)) == 181
    assert hidden_size_for_budget("rnn", 37, 1) == 1
    options_size = hidden_size_for_budget("stpn_scalar", 17, 4297, head_sizes=(4, 1))
    assert options_size == 55
    with pytest.raises(ValueError, match="budget"):
        hidden_size_for_budget("rnn", 37, 0)
    with pytest.raises(ValueError, match="head_sizes"):
        hidden_size_for_budget("rnn", 37, 100, head_sizes=(0,))
    with pytest.raises(ValueError, match="bogus: not an option"):
        hidden_size_for_budget("rnn", 37, 100, bogus=1)
