"""Short-Term Plasticity Neurons (STPN) for PyTorch, with parameter-matched baselines.

``STPN`` is used like ``torch.nn.LSTM``: ``out, state = STPN(37, 11)(x)``.
"""

from stpn_core.base import RecurrentModel
from stpn_core.baselines import (
    LSTM,
    MLP,
    RNN,
    DifferentiablePlasticity,
    FastWeights,
    FastWeightsState,
    HebbFF,
    HebbFFState,
    LSTMState,
    MLPState,
    PlasticityState,
    RNNState,
)
from stpn_core.energy import (
    energy_per_sequence,
    energy_per_step,
    energy_profile,
    synaptic_energy,
)
from stpn_core.registry import (
    MODELS,
    PRESET_HEADS,
    PaperPreset,
    build_model,
    count_parameters,
    hidden_size_for_budget,
    model_options,
    paper_preset,
    parameters_with_heads,
)
from stpn_core.stpn import STPN, STPNCell, STPNLinear, STPNState

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "MODELS",
    "PRESET_HEADS",
    "RNN",
    "DifferentiablePlasticity",
    "FastWeights",
    "FastWeightsState",
    "HebbFF",
    "HebbFFState",
    "LSTMState",
    "MLP",
    "MLPState",
    "PaperPreset",
    "PlasticityState",
    "RNNState",
    "build_model",
    "count_parameters",
    "hidden_size_for_budget",
    "model_options",
    "paper_preset",
    "parameters_with_heads",
    "STPN",
    "STPNCell",
    "STPNLinear",
    "STPNState",
    "RecurrentModel",
    "energy_per_sequence",
    "energy_per_step",
    "energy_profile",
    "synaptic_energy",
]
