"""What ``python -m stpn_rl.tune`` searches over: the one place to read or change it.

A trial's configuration is the task's default configuration for the core
(:func:`stpn_rl.config.load_config`, or the ``--config`` file) with the values below drawn into it:

- ``PPO_SPACE``: RecurrentPPO's hyper-parameters, for every core. The minibatch size is searched
  as a number of minibatches per rollout (``batch_size = n_steps * n_envs // n_minibatches``,
  at least 2), so that it fits whatever ``n_steps`` and ``n_envs`` are.
- ``N_STEPS``: the rollout length per environment, which depends on the task: divisors of the
  maze's 200-step episode, short rollouts for Pong (the buffer keeps every step's state, and
  STPN's F is 64 x 2656 there), long ones for the single-environment pendulum.
- ``STRUCTURE_SPACE``: the policy's structure: ``critic`` (how the value head gets its features,
  :class:`~stpn_rl.policies.CorePolicy`) and the MLP heads between the core and the actor's and
  the critic's linear outputs (``pi_head``, ``vf_head``, names of ``HEADS``, giving
  ``net_arch``); only the heads that fit the budget at all are searched
  (:func:`affordable_heads`: on a tiny configuration, none).
- ``HIDDEN_SIZE_FRACTION``: the core's number of units, drawn from this fraction of the default
  configuration's hidden size up to it. The parameter budget is the default configuration's
  whole agent (core, heads and outputs; on the maze the defaults are parameter-matched, e.g.
  12.3k). Heads and a ``separate`` critic (a second core) count toward it: where they would
  take the agent over the budget, the hidden size drawn is lowered to the largest that fits
  (:func:`fit_hidden_size`), so every trial has at most the default's parameters and a
  structure costs the core units it needs.
- ``STPN_SPACE``: for the STPN family (the cores taking these options: ``stpn``, ``stpn_scalar``,
  ``stpnf``, ``stpnf_scalar``), the initialisation of Λ (its uniform range) and Γ (its scale),
  and the clamp on the short-term memory F.

Every function here also accepts an ``optuna.trial.FixedTrial``, which turns a finished trial's
``params`` back into the configuration it trained with (that is how the best-parameters YAML is
written).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from typing import Any

import optuna
import stpn_core
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from stpn_rl.policies import CRITIC_CHOICES, CorePolicy
from stpn_rl.tasks import get_task, make_vec_env

DEFAULT_CRITIC = inspect.signature(CorePolicy.__init__).parameters["critic"].default

Trial = optuna.Trial | optuna.trial.FixedTrial

PPO_SPACE: dict[str, BaseDistribution] = {
    "learning_rate": FloatDistribution(1e-5, 3e-3, log=True),
    "n_minibatches": CategoricalDistribution([1, 2, 4, 8, 16, 32]),
    "gamma": CategoricalDistribution([0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
    "gae_lambda": CategoricalDistribution([0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0]),
    "ent_coef": FloatDistribution(1e-6, 0.1, log=True),
    "clip_range": CategoricalDistribution([0.1, 0.2, 0.3, 0.4]),
    "n_epochs": CategoricalDistribution([3, 4, 5, 10, 20]),
}

N_STEPS: dict[str, CategoricalDistribution] = {
    "maze": CategoricalDistribution([25, 50, 100, 200]),
    "pong": CategoricalDistribution([16, 32, 64, 128]),
    "inverted-pendulum": CategoricalDistribution([256, 512, 1024, 2048]),
    "inverted-pendulum-po": CategoricalDistribution([256, 512, 1024, 2048]),
}
N_STEPS_OTHER_TASKS = CategoricalDistribution([16, 32, 64, 128, 256])

HEADS: dict[str, list[int]] = {"none": [], "64": [64], "64-64": [64, 64]}
"""The MLP heads searched, by name: ``none`` puts the linear output on the core (the paper's)."""

STRUCTURE_SPACE: dict[str, BaseDistribution] = {
    "critic": CategoricalDistribution(list(CRITIC_CHOICES)),
    "pi_head": CategoricalDistribution(list(HEADS)),
    "vf_head": CategoricalDistribution(list(HEADS)),
}

HIDDEN_SIZE_FRACTION = 0.25
"""The smallest hidden size searched, as a fraction of the default (budget-matched) one."""

STPN_SPACE: dict[str, BaseDistribution] = {
    # Λ ~ U(low, min(1, low + width)); the paper's (0, 1) is low 0, width 1.
    "lambda_init_low": FloatDistribution(0.0, 0.9),
    "lambda_init_width": FloatDistribution(0.05, 1.0),
    # Γ ~ U(±scale/√H); the paper uses 0.001.
    "gamma_init_scale": FloatDistribution(1e-4, 0.1, log=True),
    # F is clamped to ±clamp after each update (None: no clamp); the paper's maze STPN uses 1.
    "clamp": CategoricalDistribution([None, 0.1, 1.0, 10.0]),
}


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    """Draw ``name`` from ``distribution`` through the trial's public ``suggest_*`` methods."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    raise TypeError(f"distribution: expected an optuna distribution, got {distribution!r}")


def is_stpn_core(core: str) -> bool:
    """Whether ``core`` takes STPN's initialisation and clamp options (the STPN family)."""
    return {"lambda_init", "gamma_init_scale", "clamp"} <= set(stpn_core.model_options(core))


def hidden_size_bounds(default: int) -> tuple[int, int]:
    """The searched hidden sizes: from ``HIDDEN_SIZE_FRACTION`` of the default up to it."""
    return max(1, round(default * HIDDEN_SIZE_FRACTION)), default


@functools.lru_cache(maxsize=16)
def _spaces(task: str, env_json: str) -> tuple[Any, Any]:
    env = make_vec_env(task, 1, 0, **json.loads(env_json))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def parameter_count(task: str, config: dict[str, Any]) -> int:
    """Trainable parameters of the PPO agent ``config`` describes on ``task`` (its policy built
    on the task's spaces; the global RNG is left as it was)."""
    observation_space, action_space = _spaces(task, json.dumps(config["env"], sort_keys=True))
    kwargs = get_task(task).policy_defaults | config["policy"]
    with torch.random.fork_rng(devices=[]):
        policy = CorePolicy(observation_space, action_space, lambda _: 0.0, **kwargs)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


def fit_hidden_size(task: str, config: dict[str, Any], budget: int) -> int:
    """The largest hidden size, at most ``config``'s, whose agent has at most ``budget``
    parameters (the count grows with the hidden size, so a bisection finds it);
    ``ValueError`` if even one unit is over the budget."""
    def fits(hidden_size: int) -> bool:
        policy = config["policy"] | {"hidden_size": hidden_size}
        return parameter_count(task, config | {"policy": policy}) <= budget

    low, high = 1, config["policy"]["hidden_size"]
    if fits(high):
        return high
    if not fits(low):
        raise ValueError(
            f"policy: critic {config['policy'].get('critic')!r} with net_arch "
            f"{config['policy'].get('net_arch')} is over the budget of {budget} parameters"
        )
    while high - low > 1:  # fits(low) and not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def head_names(net_arch: list[int] | dict[str, list[int]] | None) -> tuple[str, str] | None:
    """``net_arch`` as the names of its actor's and critic's heads in ``HEADS``; ``None`` if a
    head is not one of them."""
    arch = net_arch or []
    pi, vf = (arch.get("pi", []), arch.get("vf", [])) if isinstance(arch, dict) else (arch, arch)
    names = {tuple(layers): name for name, layers in HEADS.items()}
    pi_name, vf_name = names.get(tuple(pi)), names.get(tuple(vf))
    return None if pi_name is None or vf_name is None else (pi_name, vf_name)


def net_arch(pi_head: str, vf_head: str) -> list[int] | dict[str, list[int]]:
    """The ``net_arch`` of two named heads: a list where they are the same, as SB3 reads it."""
    if pi_head == vf_head:
        return list(HEADS[pi_head])
    return {"pi": list(HEADS[pi_head]), "vf": list(HEADS[vf_head])}


def affordable_heads(task: str, base: dict[str, Any], hidden_size: int) -> list[str]:
    """The names of ``HEADS`` that fit ``base``'s budget on both the actor and the critic of a
    ``separate`` critic with ``hidden_size`` units (the costliest structure at the smallest
    hidden size searched), so that every structure drawn fits with some hidden size."""
    budget = parameter_count(task, base)
    worst = {"hidden_size": hidden_size, "critic": "separate"}
    return [
        name
        for name, layers in HEADS.items()
        if not layers
        or parameter_count(task, base | {"policy": base["policy"] | worst | {"net_arch": layers}})
        <= budget
    ]


def search_space(task: str, core: str, base: dict[str, Any]) -> dict[str, BaseDistribution]:
    """Every searched hyper-parameter of ``core`` on ``task`` and its distribution; ``base`` is
    the default configuration, whose hidden size bounds the searched ones."""
    low, high = hidden_size_bounds(base["policy"]["hidden_size"])
    space = {"n_steps": N_STEPS.get(task, N_STEPS_OTHER_TASKS), **PPO_SPACE}
    heads = CategoricalDistribution(affordable_heads(task, base, low))
    space |= STRUCTURE_SPACE | {"pi_head": heads, "vf_head": heads}
    space["hidden_size"] = IntDistribution(low, high, log=True)
    return space | (STPN_SPACE if is_stpn_core(core) else {})


def check_fixed(space: dict[str, BaseDistribution], fixed: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless each fixed value names a searched parameter and lies in its
    distribution (so that ``--fix`` cannot silently be ignored or leave the range)."""
    for name, value in fixed.items():
        if name not in space:
            raise ValueError(f"fix: {name!r} is not searched; searched: {', '.join(space)}")
        distribution = space[name]
        if isinstance(distribution, CategoricalDistribution):
            valid = value in distribution.choices
        else:
            valid = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and distribution.low <= value <= distribution.high
            )
        if not valid:
            raise ValueError(f"fix: {name}={value!r} is outside its search space {distribution}")


def default_params(task: str, core: str, base: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters that reproduce ``base`` itself, so that a new study's first trial is the
    default configuration to beat; ``None`` if ``base`` lies outside the search space."""
    ppo, policy = base["ppo"], base["policy"]
    names = [name for name in ("n_steps", *PPO_SPACE) if name != "n_minibatches"]
    if any(name not in ppo for name in (*names, "batch_size")):
        return None
    params = {name: ppo[name] for name in names}
    params["n_minibatches"] = ppo["n_steps"] * base["n_envs"] // ppo["batch_size"]
    params["hidden_size"] = policy["hidden_size"]
    heads = head_names(policy.get("net_arch"))
    if heads is None:
        return None
    params |= {"critic": policy.get("critic", DEFAULT_CRITIC), "pi_head": heads[0]}
    params["vf_head"] = heads[1]
    if is_stpn_core(core):
        # The core's own values, whether the configuration sets them or leaves its defaults.
        core_model = stpn_core.build_model(core, 1, 1, **policy.get("core_options", {}))
        low, high = core_model.lambda_init
        params |= {"lambda_init_low": low, "lambda_init_width": high - low}
        params |= {"gamma_init_scale": core_model.gamma_init_scale, "clamp": core_model.clamp}
    try:
        check_fixed(search_space(task, core, base), params)
    except ValueError:
        return None
    return params


def sample_config(trial: Trial, base: dict[str, Any], task: str, core: str) -> dict[str, Any]:
    """A deep copy of ``base`` (a :func:`~stpn_rl.config.load_config` dict) with the trial's
    hyper-parameters in it, its hidden size lowered where the structure drawn needs it to stay
    within ``base``'s parameters (:func:`fit_hidden_size`)."""
    values = {
        name: suggest(trial, name, distribution)
        for name, distribution in search_space(task, core, base).items()
    }
    config = copy.deepcopy(base)
    rollout = values["n_steps"] * config["n_envs"]
    config["ppo"].update({name: values[name] for name in ("n_steps", *PPO_SPACE)})
    # PPO normalises advantages over a minibatch: one sample has no spread (NaN).
    config["ppo"]["batch_size"] = max(2, rollout // config["ppo"].pop("n_minibatches"))
    policy = config["policy"]
    policy["hidden_size"] = values["hidden_size"]
    policy["critic"] = values["critic"]
    policy["net_arch"] = net_arch(values["pi_head"], values["vf_head"])
    if is_stpn_core(core):
        low = values["lambda_init_low"]
        policy["core_options"] = {
            **policy.get("core_options", {}),
            "lambda_init": [low, min(1.0, low + values["lambda_init_width"])],
            "gamma_init_scale": values["gamma_init_scale"],
            "clamp": values["clamp"],
        }
    policy["hidden_size"] = fit_hidden_size(task, config, parameter_count(task, base))
    return config
