"""Every model by name, parameter counting, and the paper's budget-matched presets (docs/model.md
§3.7).

The paper compares models at equal parameter count, task heads included, so this module builds
any model from a name, counts its trainable parameters and finds the hidden size that meets a
budget. :func:`paper_preset` gives the hidden sizes and options of the paper's configurations.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import nn

from stpn_core.base import RecurrentModel, check_positive_int
from stpn_core.baselines import (
    LSTM,
    MLP,
    RNN,
    DifferentiablePlasticity,
    FastWeights,
    HebbFF,
)
from stpn_core.stpn import STPN, STPNLinear

_CLASSES: Mapping[str, type[RecurrentModel]] = MappingProxyType(
    {
        "stpn": STPN,
        "stpn_scalar": STPN,
        "stpnf": STPNLinear,
        "stpnf_scalar": STPNLinear,
        "rnn": RNN,
        "lstm": LSTM,
        "fast_weights": FastWeights,
        "modplast": DifferentiablePlasticity,
        "plastic": DifferentiablePlasticity,
        "hebbff": HebbFF,
        "mlp": MLP,  # no memory: the floor of the partially observed tasks
    }
)

MODELS: tuple[str, ...] = tuple(_CLASSES)
"""Names accepted by :func:`build_model`."""

_FIXED_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "stpn_scalar": {"per_synapse": False},
        "stpnf_scalar": {"per_synapse": False},
        "modplast": {"mode": "neuromodulated"},
        "plastic": {"mode": "plastic"},
    }
)
"""Options a name implies (the name *is* that choice, so it cannot be overridden)."""

_ARGUMENTS = ("self", "input_size", "hidden_size")


def _check_name(name: Any) -> None:
    if name not in MODELS:
        raise ValueError(f"name: expected one of {', '.join(MODELS)}; got {name!r}")


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options ``build_model(name, ...)`` accepts, read from the constructor (and
    the constructors it forwards ``**options`` to), less those the name fixes."""
    _check_name(name)
    accepted: list[str] = []
    for klass in _CLASSES[name].__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        accepted += [
            p.name
            for p in parameters
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and p.name not in _ARGUMENTS
            and p.name not in accepted
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    fixed = _FIXED_OPTIONS.get(name, {})
    return tuple(option for option in accepted if option not in fixed)


def build_model(name: str, input_size: int, hidden_size: int, **options: Any) -> RecurrentModel:
    """Build model ``name`` (one of :data:`MODELS`) with ``options`` passed to its constructor.

    ``"stpn_scalar"``/``"stpnf_scalar"`` are STPN/STPNLinear with scalar Λ and Γ,
    ``"modplast"``/``"plastic"`` the two modes of :class:`DifferentiablePlasticity`.
    Unknown names and options raise ``ValueError`` listing the valid ones.
    """
    valid = model_options(name)
    for option in options:
        if option not in valid:
            fixed = _FIXED_OPTIONS.get(name, {})
            if option in fixed:
                raise ValueError(
                    f"{option}: fixed to {fixed[option]!r} by the model name {name!r}; "
                    "choose another name to change it"
                )
            raise ValueError(
                f"{option}: not an option of {name!r}; valid options: {', '.join(valid)}"
            )
    return _CLASSES[name](input_size, hidden_size, **_FIXED_OPTIONS.get(name, {}), **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (fixed hyper-parameters kept as buffers do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_head_sizes(head_sizes: Iterable[int]) -> tuple[int, ...]:
    return tuple(check_positive_int("head_sizes", size) for size in head_sizes)


def parameters_with_heads(
    name: str, input_size: int, hidden_size: int, *, head_sizes: Iterable[int] = (), **options: Any
) -> int:
    """Trainable parameters of ``build_model(name, ...)`` plus one ``nn.Linear(H, k)`` per ``k``
    in ``head_sizes`` (the task read-outs, which the paper's budgets include).

    The model is built on the meta device, so counting costs no memory or initialisation.
    """
    sizes = _check_head_sizes(head_sizes)
    with torch.device("meta"):
        model = build_model(name, input_size, hidden_size, **options)
    return count_parameters(model) + sum(hidden_size * k + k for k in sizes)


def hidden_size_for_budget(
    name: str, input_size: int, budget: int, *, head_sizes: Iterable[int] = (), **options: Any
) -> int:
    """The hidden size whose parameter count (heads included) is closest to ``budget``.

    Ties go to the smaller size. Counts grow with the hidden size, so the search doubles an
    upper bound and then bisects. ``head_sizes``: output size of each task head, e.g. ``(37,)``
    for associative retrieval, ``(4, 1)`` for the maze's policy and value heads.
    """
    check_positive_int("budget", budget)
    sizes = _check_head_sizes(head_sizes)

    def count(hidden_size: int) -> int:
        return parameters_with_heads(name, input_size, hidden_size, head_sizes=sizes, **options)

    low, high = 1, 1
    while count(high) < budget:
        low, high = high, high * 2
    while high - low > 1:  # invariant: count(low) < budget <= count(high), or low == high == 1
        middle = (low + high) // 2
        if count(middle) < budget:
            low = middle
        else:
            high = middle
    return low if budget - count(low) <= count(high) - budget else high


class PaperPreset(NamedTuple):
    """One model of the paper's comparison: pass to :func:`build_model` as
    ``build_model(preset.model, input_size, preset.hidden_size, **preset.options)``."""

    model: str
    hidden_size: int
    options: Mapping[str, Any]

    def build(self, input_size: int) -> RecurrentModel:
        """The model of this preset for ``input_size`` features (37 for ``"ar"``, 17 maze)."""
        return build_model(self.model, input_size, self.hidden_size, **self.options)


_PRESETS: Mapping[str, Mapping[str, PaperPreset]] = MappingProxyType(
    {
        # docs/model.md §3.7 and §5.4: input 37, one head Linear(H, 37); about 2.0k parameters each.
        "ar": {
            "stpn": PaperPreset("stpn", 11, {}),
            "rnn": PaperPreset("rnn", 20, {}),
            "lstm": PaperPreset("lstm", 9, {}),
            "fast_weights": PaperPreset("fast_weights", 20, {}),
            "modplast": PaperPreset("modplast", 17, {"clamp": 1.0}),
            "hebbff": PaperPreset("hebbff", 26, {"anti_hebbian": True}),
            "stpn_scalar": PaperPreset("stpn_scalar", 20, {}),
            "stpnf": PaperPreset("stpnf", 13, {}),
            "stpnf_scalar": PaperPreset("stpnf_scalar", 26, {}),
        },
        # docs/model.md §3.7 and §6.3: input 17, heads Linear(H, 4) and Linear(H, 1); about 12.3k
        # parameters for the main models, about 4.3k for the ablations.
        "maze": {
            "stpn": PaperPreset("stpn", 55, {"norm_timing": "post", "clamp": 1.0}),
            "rnn": PaperPreset("rnn", 100, {"init": "miconi"}),
            "lstm": PaperPreset("lstm", 47, {}),
            "modplast": PaperPreset("modplast", 73, {"clamp": 1.0}),
            "stpn_h30": PaperPreset("stpn", 30, {}),
            "stpn_scalar": PaperPreset("stpn_scalar", 55, {}),
            "stpnf": PaperPreset("stpnf", 76, {}),
            "stpnf_scalar": PaperPreset("stpnf_scalar", 181, {}),
            "hebbff": PaperPreset("hebbff", 181, {"anti_hebbian": True}),
        },
        # Continual familiarity (Tyulmankov et al. 2022): input d = 100, one head Linear(H, 1);
        # about 10.3k parameters each. Γ is drawn U(±0.001/√H) (U(±0.001/H) for the scalar
        # recurrent STPN), whose scale here is relative to 1/√fan of each layer's own init;
        # HebbFF's plasticity sign is free, as in Tyulmankov's runs. The W ~ N(0, 1)/√fan_in and
        # b ~ N(0, 1) of that code are drawn by the task's module (stpn_supervised, init="normal").
        "familiarity": {
            "hebbff": PaperPreset("hebbff", 100, {"anti_hebbian": False}),
            "ustpnf": PaperPreset("stpnf_scalar", 100, {"gamma_init_scale": 0.001}),
            "stpnf": PaperPreset("stpnf", 34, {"gamma_init_scale": 0.001 * math.sqrt(100 / 34)}),
            "ustpnr": PaperPreset("stpn_scalar", 62, {"gamma_init_scale": 0.001 / math.sqrt(62)}),
            "stpnr": PaperPreset("stpn", 27, {}),
            "lstm": PaperPreset("lstm", 21, {}),
        },
    }
)

PRESET_HEADS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"ar": (37,), "maze": (4, 1), "familiarity": (1,)}
)
"""Output sizes of each task's heads, for :func:`parameters_with_heads`."""


def paper_preset(task: str, model: str) -> PaperPreset:
    """Hidden size and options of the paper's ``model`` for ``task`` (``"ar"``, ``"maze"`` or
    ``"familiarity"``).

    Sizes are the paper's budget-matched ones (docs/model.md §3.7). The STPN presets use the
    textbook presynaptic vector ``[x_t; h_{t-1}]`` (docs/model.md §1.5) and every known artefact of
    the original code is left out (docs/model.md §10).
    """
    if task not in _PRESETS:
        raise ValueError(f"task: expected one of {', '.join(_PRESETS)}; got {task!r}")
    if model not in _PRESETS[task]:
        raise ValueError(
            f"model: expected one of {', '.join(_PRESETS[task])} for task {task!r}; got {model!r}"
        )
    preset = _PRESETS[task][model]
    return preset._replace(options=dict(preset.options))
