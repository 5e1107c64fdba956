"""Run directories (docs/run-format.md), resuming, the CLIs, and configuration errors."""

import json

import pandas as pd
import pytest
import stpn_core
import torch
import yaml
from stpn_rl import evaluate, train
from stpn_rl.config import load_config
from stpn_rl.tasks import make_vec_env

METRIC_TYPES = {
    "task": str,
    "model": str,
    "seed": int,
    "params": int,
    "proficiency": float,
    "proficiency_name": str,
    "energy_per_step": float,
    "energy_per_sequence": float,
    "energy_profile": list,
    "wall_time_s": float,
    "versions": dict,
    "mean_reward": float,
    "std_reward": float,
    "timesteps": int,
    "episodes": int,
}


def test_run_directory_follows_the_contract_and_resumes(tiny, tmp_path) -> None:
    config = tiny("maze", "stpn", total_timesteps=64, checkpoint_freq=32)
    run = train.train("maze", "stpn", config, seed=1, out=tmp_path, progress_bar=False)
    assert run == tmp_path / "maze" / "stpn" / "seed1"
    metrics = json.loads((run / "metrics.json").read_text())
    for key, kind in METRIC_TYPES.items():
        assert isinstance(metrics[key], kind), key
    assert metrics["timesteps"] == 64 and metrics["proficiency"] == metrics["mean_reward"]
    assert len(metrics["energy_profile"]) == 20  # one value per step of the 20-step episodes
    log = pd.read_csv(run / "logs" / "progress.csv")
    assert {"time/total_timesteps", "rollout/ep_rew_mean"} <= set(log.columns)
    assert (run / "checkpoints" / "rl_model_32_steps.zip").is_file()

    # Interrupt after the first checkpoint, then rerun with a longer budget: it resumes.
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "final.zip").unlink()
    (run / "checkpoints" / "rl_model_64_steps.zip").unlink()
    resumed = train.train(
        "maze", "stpn", config, total_timesteps=128, seed=1, out=tmp_path, progress_bar=False
    )
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["timesteps"] == 128
    steps = pd.read_csv(run / "logs" / "progress.csv")["time/total_timesteps"].tolist()
    assert steps == [32, 64, 96, 128]  # the first session's row past the checkpoint is replaced
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert load_config("maze", "stpn", run / "config.yaml") == recorded


def test_rerun_with_another_configuration_is_refused(tiny, tmp_path) -> None:
    train.train("maze", "stpn", tiny("maze", "stpn"), out=tmp_path, progress_bar=False)
    (tmp_path / "maze" / "stpn" / "seed0" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="another configuration"):
        train.train(
            "maze",
            "stpn",
            tiny("maze", "stpn", ppo={"gamma": 0.5}),
            out=tmp_path,
            progress_bar=False,
        )


def test_command_lines_train_and_evaluate(tiny, tmp_path, capsys) -> None:
    config_file = tmp_path / "lstm.yaml"
    config_file.write_text(yaml.safe_dump(tiny("maze", "lstm")))
    train.main(
        [
            "--task",
            "maze",
            "--core",
            "lstm",
            "--config",
            str(config_file),
            "--out",
            str(tmp_path / "runs"),
            "--no-progress-bar",
        ]
    )
    run = tmp_path / "runs" / "maze" / "lstm" / "seed0"
    evaluate.main([str(run), "--episodes", "3", "--deterministic"])
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 3 and result["energy_per_step"] > 0
    assert "mean reward" in capsys.readouterr().out


def test_energy_of_the_first_step_is_the_cores_energy_on_the_first_observation(tiny) -> None:
    model = train.build_agent(tiny("maze", "stpn"), "maze", seed=0)
    result = evaluate.evaluate_agent(
        model, "maze", 4, deterministic=True, seed=2, env_kwargs={"size": 7, "episode_length": 20}
    )
    obs = torch.as_tensor(make_vec_env("maze", 4, seed=2, size=7, episode_length=20).reset())
    core = model.policy.lstm_actor.core
    expected = core.energy(obs.unsqueeze(1)).mean()
    assert result["energy_profile"][0] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"colour": 1}, "unknown key"),
        ({"ppo": {"learning_rat": 0.1}}, "learning_rat"),
        ({"ppo": {"gamma": 1.5}}, "ppo.gamma"),
        ({"policy": {"hidden_size": 0}}, "hidden_size"),
        ({"env": {"size": 6}}, "size"),
        ({"n_envs": "many"}, "n_envs"),
        ({"policy": {"core": "lstm"}}, "core"),
    ],
)
def test_bad_configuration_files_are_reported(change, match, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(ValueError, match=match):
        load_config("maze", "stpn", path)


def test_a_config_for_another_core_is_refused(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="core"):
        train.train("maze", "stpn", tiny("maze", "lstm"), out=tmp_path, progress_bar=False)


def test_unknown_core_and_task_names_are_reported() -> None:
    with pytest.raises(ValueError, match="core: expected one of"):
        load_config("maze", "gru")
    with pytest.raises(ValueError, match="task: expected one of"):
        load_config("mazes", "stpn")


def test_maze_configs_use_the_papers_budget_matched_presets() -> None:
    for name in (
        "stpn",
        "lstm",
        "rnn",
        "modplast",
        "stpn_scalar",
        "stpnf",
        "stpnf_scalar",
        "hebbff",
    ):
        preset = stpn_core.paper_preset("maze", name)
        policy = load_config("maze", name)["policy"]
        assert policy["hidden_size"] == preset.hidden_size, name
        assert policy["core_options"] == dict(preset.options), name
