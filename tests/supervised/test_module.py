"""SequenceClassifier and the CLI: every packaged config runs, matches the paper's budget, and
bad values fail clearly; the STPN learns the task."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from stpn_core import paper_preset
from stpn_supervised import AssociativeRetrievalDataModule, SequenceClassifier
from stpn_supervised.cli import CONFIG_MODELS, config_path, main, run
from torchmetrics import Metric

SMALL_DATA = ["--data.train_size=64", "--data.val_size=64", "--data.test_size=64",
              "--data.batch_size=32"]


@pytest.mark.parametrize("name", CONFIG_MODELS)
def test_config_is_the_paper_preset_at_its_budget(name: str) -> None:
    config = yaml.safe_load(config_path(name).read_text())
    preset = paper_preset("ar", name)
    assert config["model"]["name"] == preset.model
    assert config["model"]["hidden_size"] == preset.hidden_size
    assert config["model"]["model_options"] == dict(preset.options)
    module = SequenceClassifier(**config["model"])
    # docs/model.md §3.7: about 2.0k, read-out included
    assert 1900 <= module.num_parameters <= 2100
    assert config["data"]["num_pairs"] == 3 and config["trainer"]["max_epochs"] == 200


@pytest.mark.parametrize("name", CONFIG_MODELS)
def test_fast_dev_run_of_every_config(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", f"ar/{name}", "--trainer.fast_dev_run=2",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                *SMALL_DATA])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0 <= metrics["val/acc"] <= 1
    assert metrics["val/energy"] > 0


def test_cli_test_subcommand_reports_accuracy_and_energy(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["test", "--config", "ar/lstm", "--trainer.enable_progress_bar=false",
                *SMALL_DATA])
    metrics = cli.trainer.callback_metrics
    assert 0 <= metrics["test/acc"] <= 1 and metrics["test/energy"] > 0
    profile = cli.model.energy_profile
    assert len(profile) == 9
    assert metrics["test/energy"] == pytest.approx(sum(profile) / 9, rel=1e-5)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--model.name=transformer", "name: expected one of"),
        ("--model.hidden_size=-3", "hidden_size"),
        ("--model.lr=0", "lr"),
        ("--data.num_pairs=27", "num_pairs"),
        ("--data.train_size=-1", "train_size"),
        ("--model.model_options={clamp: 1.0}", "clamp"),  # not an option of the RNN
    ],
)
def test_bad_config_values_raise_clear_errors(argument: str, message: str, tmp_path,
                                              monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        main(["fit", "--config", "ar/rnn", "--trainer.fast_dev_run=1", *SMALL_DATA, argument])


def test_unknown_config_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="config: expected one of"):
        config_path("gru")


def test_energy_is_the_mean_per_step_energy_of_the_core(tmp_path) -> None:
    module = SequenceClassifier("stpn", 11)
    data = AssociativeRetrievalDataModule(train_size=64, val_size=64, test_size=200,
                                          batch_size=64, data_dir=tmp_path)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    result = trainer.test(module, data, verbose=False)[0]
    x = torch.cat([batch[0] for batch in data.test_dataloader()])
    y = torch.cat([batch[1] for batch in data.test_dataloader()])
    with torch.no_grad():
        energy = module.core.energy(x)
        accuracy = (module(x).argmax(-1) == y).float().mean()
    assert result["test/energy"] == pytest.approx(energy.mean().item(), rel=1e-5)
    assert result["test/energy_per_sequence"] == pytest.approx(energy.sum(1).mean().item(),
                                                               rel=1e-5)
    assert module.energy_profile == pytest.approx(energy.mean(0).tolist(), rel=1e-5)
    assert result["test/acc"] == pytest.approx(accuracy.item())  # all 200, partial batch included


def test_stpn_learns_associative_retrieval(tmp_path) -> None:
    L.seed_everything(0, verbose=False)
    data = AssociativeRetrievalDataModule(train_size=20_000, val_size=500, test_size=2000,
                                          batch_size=32, data_dir=tmp_path)
    module = SequenceClassifier("stpn", 11, lr=3e-3)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, data)
    accuracy = trainer.test(module, data, verbose=False)[0]["test/acc"]
    assert accuracy > 0.4  # chance is 0.1 with ten digits


def test_metric_states_are_float32_for_every_accelerator() -> None:
    # MPS has no float64: every floating metric state must be float32, before and after updates.
    module = SequenceClassifier("rnn", 8)
    x = torch.nn.functional.one_hot(torch.randint(0, 37, (4, 9)), 37).float()
    module.test_step((x, torch.randint(26, 36, (4,))), 0)
    states = {f"{name}.{key}": getattr(metric, key) for name, metric in module.named_modules()
              if isinstance(metric, Metric) for key in metric._defaults}
    assert "test_profile.total" in states
    assert {s.dtype for s in states.values() if s.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit", "--config", "missing.yaml"], "--config: no file missing.yaml"),
        (["fit", "--config", "broken.yaml"], "--config: cannot read broken.yaml as YAML"),
        (["fit", "--config", "typo.yaml"], "does not accept option 'model.nam'"),
        (["fit", "--config", "ar/rnn", "--trainer.max_epochs=x"], "trainer.max_epochs"),
        (["fitt"], "invalid choice: 'fitt'"),
    ],
)
def test_cli_errors_are_one_line_exit_2(arguments: list[str], message: str, tmp_path,
                                        monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text("model: [\n")
    (tmp_path / "typo.yaml").write_text("model:\n  nam: stpn\n")
    monkeypatch.setattr("sys.argv", ["python -m stpn_supervised", *arguments])
    with pytest.raises(SystemExit) as exited:
        run()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and message in lines[0]
