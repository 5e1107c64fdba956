"""FamiliarityClassifier: the six budget-matched presets and their configs, the metrics against
a direct computation, learning R = 3, the generalisation sweep, and the CLI."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import yaml
from stpn_core import paper_preset
from stpn_supervised.cli import FAMILIARITY_MODELS, config_path, main, task_of
from stpn_supervised.familiarity import FamiliarityDataModule
from stpn_supervised.familiarity_module import FamiliarityClassifier, generalisation

SPEC_COUNTS = {"hebbff": 10203, "ustpnf": 10203, "stpnf": 10269, "ustpnr": 10171,
               "stpnr": 10342, "lstm": 10354}
"""Trainable parameters of the original classes, read-out included (docs/model.md §3.7)."""


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, num_sanity_val_steps=0, **kwargs)


@pytest.mark.parametrize("name", FAMILIARITY_MODELS)
def test_config_is_the_paper_preset_at_its_budget(name: str) -> None:
    config = yaml.safe_load(config_path(f"familiarity/{name}").read_text())
    preset = paper_preset("familiarity", name)
    model = config["model"]
    assert (model["name"], model["hidden_size"]) == (preset.model, preset.hidden_size)
    assert model["model_options"] == pytest.approx(dict(preset.options))
    module = FamiliarityClassifier(**model)
    assert abs(module.num_parameters - SPEC_COUNTS[name]) <= 0.02 * SPEC_COUNTS[name]
    assert module.num_parameters == SPEC_COUNTS[name]  # in fact exactly the original's count
    assert config["data"]["seq_len"] == 5000 and config["data"]["d"] == 100


def test_normal_init_draws_the_readout_and_feed_forward_weights() -> None:
    module = FamiliarityClassifier("hebbff", 400, input_size=400)
    assert module.core.weight.std().item() == pytest.approx(400 ** -0.5, rel=0.02)
    assert module.core.bias.std().item() == pytest.approx(1.0, rel=0.15)
    assert module.readout.weight.std().item() == pytest.approx(400 ** -0.5, rel=0.15)
    default = FamiliarityClassifier("hebbff", 400, input_size=400, init="default")
    assert default.core.weight.abs().max() <= 400 ** -0.5  # the layer's own U(±1/√I)


def test_stpn_cores_run_the_fast_path() -> None:
    for name in ("stpnr", "stpnf", "ustpnr", "ustpnf"):
        preset = paper_preset("familiarity", name)
        module = FamiliarityClassifier(preset.model, preset.hidden_size, dict(preset.options))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a fallback to the reference loop warns
            module(torch.ones(1, 20, 100)).sum().backward()


def test_metrics_match_a_direct_computation(tmp_path) -> None:
    module = FamiliarityClassifier("stpn", 6, val_energy=True)
    data = FamiliarityDataModule(seq_len=300, val_sequences=2, data_dir=tmp_path)
    result = _trainer().validate(module, data, verbose=False)[0]
    x, y = next(iter(data.val_dataloader()))
    with torch.no_grad():
        predicted = module(x).sigmoid() >= 0.5
        energy = module.core.energy(x)
    familiar = y.bool()
    assert result["val/acc"] == pytest.approx((predicted == familiar).float().mean().item())
    assert result["val/tpr"] == pytest.approx(predicted[familiar].float().mean().item())
    assert result["val/fpr"] == pytest.approx(predicted[~familiar].float().mean().item())
    assert result["val/energy"] == pytest.approx(energy.mean().item(), rel=1e-5)


def test_a_small_stpn_learns_repeat_distance_three(tmp_path) -> None:
    L.seed_everything(0, verbose=False)
    module = FamiliarityClassifier("stpn", 8)
    data = FamiliarityDataModule(seq_len=1000, data_dir=tmp_path)
    _trainer(max_epochs=10).fit(module, data)
    rows = generalisation(module, [3], energy_at=3, seq_len=1000, seed=0, data_dir=tmp_path)
    assert rows[0]["acc"] > 0.8  # chance: 2/3
    assert rows[0]["tpr"] > 0.5 and rows[0]["fpr"] < 0.2 and rows[0]["energy"] > 0
    assert len(module.energy_profile) == 1000


def test_generalisation_gives_one_row_per_repeat_distance(tmp_path) -> None:
    module = FamiliarityClassifier("stpnf", 4)
    rows = generalisation(module, range(1, 6), energy_at=2, seq_len=60, seed=1,
                          data_dir=tmp_path)
    assert [row["repeat_distance"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(0 <= row[key] <= 1 for row in rows for key in ("acc", "tpr", "fpr"))
    assert [("energy" in row) for row in rows] == [False, True, False, False, False]
    assert module.measure_test_energy  # restored after the sweep


@pytest.mark.parametrize("name", FAMILIARITY_MODELS)
def test_fast_dev_run_of_every_config(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", f"familiarity/{name}", "--trainer.fast_dev_run=2",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                "--data.seq_len=50", "--model.val_energy=true"])
    assert isinstance(cli.model, FamiliarityClassifier)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0 <= metrics["val/acc"] <= 1
    assert metrics["val/energy"] > 0


def test_task_is_read_from_the_config(tmp_path) -> None:
    ar, familiarity = str(config_path("ar/stpn")), str(config_path("familiarity/stpnr"))
    assert task_of(["fit", "--config", ar]) == "ar"
    assert task_of(["fit", f"--config={familiarity}"]) == "familiarity"
    assert task_of(["fit"]) == "ar"
    with pytest.raises(ValueError, match="familiarity/stpnr"):
        config_path("familiarity/gru")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"init": "xavier"}, "init"), ({"name": "gru"}, "name"), ({"lr": 0}, "lr"),
     ({"hidden_size": 0}, "hidden_size")],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FamiliarityClassifier(**kwargs)
