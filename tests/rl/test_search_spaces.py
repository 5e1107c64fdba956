"""The policy's structure in the search space: every configuration drawn builds an agent within
the default configuration's parameter budget, and a trial's parameters give back the same
configuration through ``best.yaml``."""

from __future__ import annotations

import optuna
import pytest
from stpn_rl.config import load_config, merge
from stpn_rl.search_spaces import (
    HEADS,
    default_params,
    fit_hidden_size,
    parameter_count,
    sample_config,
    search_space,
)
from stpn_rl.train import build_agent, count_parameters
from stpn_rl.tune import TuneOptions, write_results

CASES = [("inverted-pendulum-po", "stpn"), ("inverted-pendulum-po", "lstm"), ("maze", "stpn")]


def drawn(task: str, core: str, seed: int) -> tuple[optuna.Trial, dict, dict]:
    """A random trial of a fresh study, the default configuration and the trial's one."""
    base = load_config(task, core)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return trial, base, sample_config(trial, base, task, core)


@pytest.mark.parametrize(("task", "core"), CASES)
def test_every_drawn_structure_builds_an_agent_within_the_budget(task: str, core: str) -> None:
    budget = parameter_count(task, load_config(task, core))
    structures = set()
    for seed in range(6):
        trial, base, config = drawn(task, core, seed)
        agent = build_agent(config, task, seed=0)
        assert count_parameters(agent) == parameter_count(task, config) <= budget
        policy, params = config["policy"], trial.params
        assert (agent.policy.lstm_critic is None) == (params["critic"] != "separate")
        assert agent.policy.critic_mode == policy["critic"] == params["critic"]
        extractor = agent.policy.mlp_extractor
        assert extractor.latent_dim_pi == (HEADS[params["pi_head"]] or [policy["hidden_size"]])[-1]
        assert extractor.latent_dim_vf == (HEADS[params["vf_head"]] or [policy["hidden_size"]])[-1]
        # The hidden size drawn is kept unless over the budget; then it is the largest that fits.
        hidden = policy["hidden_size"]
        assert hidden <= params["hidden_size"]
        if hidden < params["hidden_size"]:
            wider = merge(config, {"policy": {"hidden_size": hidden + 1}})
            assert parameter_count(task, wider) > budget
        structures.add((params["critic"], params["pi_head"], params["vf_head"]))
    assert len(structures) > 1


@pytest.mark.parametrize(("task", "core"), CASES)
def test_a_trial_comes_back_from_best_yaml_unchanged(task: str, core: str, tmp_path) -> None:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3)
    )
    base = load_config(task, core)
    configs = []
    for value in (1.0, 5.0, 2.0):
        trial = study.ask()
        configs.append(sample_config(trial, base, task, core))
        study.tell(trial, value)
    written = write_results(study, TuneOptions(task, core, out=tmp_path), base)
    assert study.best_trial.number == 1
    assert load_config(task, core, written["best"]) == configs[1]


def test_the_default_structure_is_a_point_of_the_space() -> None:
    base = load_config("inverted-pendulum-po", "stpn")
    params = default_params("inverted-pendulum-po", "stpn", base)
    assert (params["critic"], params["pi_head"], params["vf_head"]) == ("detached", "none", "none")
    again = sample_config(
        optuna.trial.FixedTrial(params), base, "inverted-pendulum-po", "stpn"
    )
    assert again["policy"]["hidden_size"] == 64 and again["policy"]["net_arch"] == []
    separate = merge(base, {"policy": {"critic": "separate", "net_arch": {"pi": [64], "vf": []}}})
    params = default_params("inverted-pendulum-po", "stpn", separate)
    assert (params["critic"], params["pi_head"], params["vf_head"]) == ("separate", "64", "none")
    # A structure the space does not hold (heads of 32 units) has no parameters in it.
    odd = merge(base, {"policy": {"net_arch": [32]}})
    assert default_params("inverted-pendulum-po", "stpn", odd) is None


def test_only_heads_that_fit_the_budget_are_searched() -> None:
    task = "inverted-pendulum-po"
    pendulum = search_space(task, "stpn", load_config(task, "stpn"))
    assert pendulum["pi_head"].choices == pendulum["vf_head"].choices == tuple(HEADS)
    maze = load_config("maze", "stpn")  # 12.2k parameters: two 64-unit layers twice are too many
    assert search_space("maze", "stpn", maze)["pi_head"].choices == ("none", "64")
    tiny = merge(maze, {"policy": {"hidden_size": 6}})
    assert search_space("maze", "stpn", tiny)["vf_head"].choices == ("none",)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert sample_config(trial, tiny, "maze", "stpn")["policy"]["net_arch"] == []


def test_a_structure_over_the_budget_even_at_one_unit_is_refused() -> None:
    config = merge(
        load_config("inverted-pendulum-po", "lstm"),
        {"policy": {"critic": "separate", "net_arch": [64, 64]}},
    )
    with pytest.raises(ValueError, match="over the budget of 1000 parameters"):
        fit_hidden_size("inverted-pendulum-po", config, budget=1000)
