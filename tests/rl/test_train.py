"""Run directories (docs/run-format.md), resuming, the CLIs, and configuration errors."""

import json
import runpy
import sys

import pandas as pd
import pytest
import stpn_core
import torch
import yaml
from stpn_rl import evaluate, train
from stpn_rl.config import DEFAULT_CRITIC, load_config, validate_config
from stpn_rl.tasks import make_vec_env
from stpn_rl.train import build_agent

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


def test_run_directory_follows_the_contract_and_extends(tiny, tmp_path) -> None:
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
    assert (run / "checkpoints" / "final.zip").is_file()

    # The same command again prints the finished run; a larger budget trains it further, to
    # exactly where one uninterrupted longer run ends.
    assert train.train("maze", "stpn", config, seed=1, out=tmp_path, progress_bar=False) == run
    assert json.loads((run / "metrics.json").read_text()) == metrics
    extended = train.train(
        "maze", "stpn", config, total_timesteps=128, seed=1, out=tmp_path, progress_bar=False
    )
    longer = train.train(
        "maze", "stpn", config | {"total_timesteps": 128}, seed=1, out=tmp_path / "longer",
        progress_bar=False,
    )
    metrics, reference = (json.loads((r / "metrics.json").read_text()) for r in (extended, longer))
    assert metrics["timesteps"] == 128
    for key in ("mean_reward", "std_reward", "energy_per_step", "energy_profile", "params"):
        assert metrics[key] == reference[key], key
    steps = pd.read_csv(run / "logs" / "progress.csv")["time/total_timesteps"].tolist()
    assert steps == [32, 64, 96, 128]
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["total_timesteps"] == 128
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


def test_the_configs_default_critic_is_the_policys(tiny) -> None:
    config = tiny("maze", "stpn")
    del config["policy"]["critic"]
    validate_config(config, "maze")
    assert build_agent(config, "maze", seed=0).policy.critic_mode == DEFAULT_CRITIC


def run_cli(module: str, argv: list[str], monkeypatch, capsys) -> str:
    """Run ``python -m module argv`` in this process; return its stderr (exit status 2)."""
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy's notice
@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("stpn_rl.evaluate", ["RUN", "--episodes", "0"], "error: --episodes: expected a positive"),
        ("stpn_rl.evaluate", ["RUN", "--episodes", "-3"], "error: --episodes: expected a positive"),
        ("stpn_rl.evaluate", ["RUN"], "error: run_dir: RUN has no config.yaml"),
        ("stpn_rl.train", ["--task", "chess", "--core", "stpn"], "error: task: expected one of"),
        ("stpn_rl.train", ["--task", "maze"], "error: the following arguments are required"),
        ("stpn_rl.train", ["--task", "maze", "--core", "stpn", "--config", "BAD"],
         "error: BAD, line 2, column 7: not valid YAML: expected "),
        ("stpn_rl.train", ["--task", "maze", "--core", "stpn", "--n-envs", "0"],
         "error: n_envs: expected a positive integer, got 0"),
    ],
)
def test_command_line_errors_are_one_line(module, argv, message, tmp_path, monkeypatch,
                                          capsys) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("ppo: {gamma: 0.9\nn_envs: 2\n")
    argv = [str(bad_yaml) if a == "BAD" else str(tmp_path / "run") if a == "RUN" else a
            for a in argv]
    message = message.replace("BAD", str(bad_yaml)).replace("RUN", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    err = run_cli(module, argv, monkeypatch, capsys)
    assert len(err.splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "runs").exists()  # nothing written
