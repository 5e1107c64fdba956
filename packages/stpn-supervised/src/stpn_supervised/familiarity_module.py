"""``FamiliarityClassifier``: any ``stpn_core`` model with a sigmoid read-out at every step,
trained as in Tyulmankov et al. 2022 (BCE at every step, full BPTT over the sequence, Adam).

Familiarity is a per-step yes/no answer whose classes are unbalanced (1/3 familiar), so besides
accuracy the module reports the true-positive rate (familiar patterns flagged) and the
false-positive rate (new patterns flagged): a network that forgets too fast loses true positives,
one that forgets too slowly gains false ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryStatScores

from stpn_supervised.familiarity import FamiliarityDataModule
from stpn_supervised.module import RecurrentTaskModule, StepProfile

INITS = ("default", "normal")
STAGES = ("train", "val", "test")
R_TEST = tuple(range(1, 20))
"""Repeat distances of the generalisation test (1 to 19, as in the paper's familiarity runs)."""


def normal_init(module: nn.Module) -> None:
    """Tyulmankov's initialisation of a feed-forward weight and bias: ``W ~ N(0, 1)/√fan_in``,
    ``b ~ N(0, 1)``, applied to ``module.weight`` and ``module.bias``."""
    with torch.no_grad():
        module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight.shape[1]))
        if getattr(module, "bias", None) is not None:
            module.bias.normal_(0.0, 1.0)


def rates(stats: Tensor) -> dict[str, Tensor]:
    """Accuracy, true- and false-positive rates from ``BinaryStatScores`` ``[tp, fp, tn, fn, n]``
    (a rate with no sample to count is NaN, not 0, so it cannot pass for a measurement)."""
    tp, fp, tn, fn, support = stats.float().unbind()  # float32: exact to 16M steps
    total = tp + fp + tn + fn
    return {"acc": (tp + tn) / total, "tpr": tp / support, "fpr": fp / (fp + tn)}


class FamiliarityClassifier(RecurrentTaskModule):
    """Per-step familiarity: ``p_t = σ(w·h_t + b)``, trained with BCE at every step.

    Args:
        name, hidden_size, model_options, lr: see :class:`RecurrentTaskModule` (the paper's six
            models are in ``configs/familiarity/`` and ``stpn_core.paper_preset("familiarity",
            model)``).
        input_size: pattern dimension ``d`` (paper: 100).
        init: ``"normal"`` re-draws the read-out, and the core's ``weight``/``bias`` when it has
            them (the plastic feed-forward and STPN layers), as ``W ~ N(0, 1)/√fan_in`` and
            ``b ~ N(0, 1)``, the initialisation of the paper's familiarity code; ``"default"``
            keeps the layers' own (``nn.Linear`` for the read-out).
        val_energy: also measure the energy on the validation sequences (each measurement runs
            the model's per-step energy loop over the whole sequence, several times the cost of
            a training iteration for the STPN, so it is off by default; the test always has it).
    """

    def __init__(
        self,
        name: str = "stpn",
        hidden_size: int = 27,
        model_options: dict[str, Any] | None = None,
        input_size: int = 100,
        init: str = "normal",
        lr: float = 1e-3,
        val_energy: bool = False,
    ) -> None:
        super().__init__(name, hidden_size, model_options, input_size, lr)
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}; got {init!r}")
        if not isinstance(val_energy, bool):
            raise TypeError(f"val_energy: expected True or False, got {val_energy!r}")
        self.save_hyperparameters()
        self.readout = nn.Linear(self.core.output_size, 1)
        if init == "normal":
            normal_init(self.readout)
            if isinstance(getattr(self.core, "weight", None), nn.Parameter):
                normal_init(self.core)
        self._count_parameters()
        self.val_energy = val_energy
        self.measure_test_energy = True
        """Whether :meth:`test_step` measures energy (a sweep over many test sets can skip it)."""
        self.stats = nn.ModuleDict({f"{s}_stats": BinaryStatScores() for s in STAGES})
        self.energy_means = nn.ModuleDict({f"{s}_energy": MeanMetric() for s in ("val", "test")})
        self.test_energy_sequence = MeanMetric()
        self.test_profile = StepProfile()
        self.energy_profile: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, T)`` of "familiar" at every step; the state starts at zero."""
        output, _ = self.core(x)
        return self.readout(output).squeeze(-1)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nnf.binary_cross_entropy_with_logits(logits, y)  # BCE of the sigmoid, stably
        self.stats[f"{stage}_stats"].update(logits.detach().sigmoid(), y.long())  # threshold 0.5
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "train",
                 sync_dist=stage != "train", batch_size=x.shape[0])
        measure = self.val_energy if stage == "val" else stage == "test"
        if measure and (stage != "test" or self.measure_test_energy):
            energy = self.core.energy(x)
            self.energy_means[f"{stage}_energy"].update(energy.mean(dim=1))
            if stage == "test":
                self.test_energy_sequence.update(energy.sum(dim=1))
                self.test_profile.update(energy)
        return loss

    def _log_rates(self, stage: str) -> None:
        """Accuracy, TPR and FPR over the whole epoch (counts reduced across processes)."""
        for key, value in rates(self.stats[f"{stage}_stats"].compute()).items():
            self.log(f"{stage}/{key}", value.float(), prog_bar=key == "acc")
        self.stats[f"{stage}_stats"].reset()
        if stage != "train" and self.energy_means[f"{stage}_energy"].update_called:
            self.log(f"{stage}/energy", self.energy_means[f"{stage}_energy"].compute())
            self.energy_means[f"{stage}_energy"].reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_rates("train")

    def on_validation_epoch_end(self) -> None:
        self._log_rates("val")

    def on_test_epoch_start(self) -> None:
        self.test_profile.reset()
        self.test_energy_sequence.reset()

    def on_test_epoch_end(self) -> None:
        self._log_rates("test")
        if self.test_energy_sequence.update_called:
            self.log("test/energy_per_sequence", self.test_energy_sequence.compute())
            self.energy_profile = self.test_profile.compute().tolist()


def generalisation(module: FamiliarityClassifier, repeat_distances: Iterable[int] = R_TEST, *,
                   energy_at: int | None = None, **data_options: Any) -> list[dict[str, Any]]:
    """Test ``module`` on fresh sequences at every repeat distance of ``repeat_distances``.

    Returns one row per distance: ``repeat_distance``, ``acc``, ``tpr``, ``fpr`` and ``loss``
    (and ``energy``, ``energy_per_sequence`` at ``energy_at``, whose per-step profile is left in
    ``module.energy_profile``; energy costs a pass of the model's per-step energy loop, so it is
    measured once). ``data_options`` are those of :class:`FamiliarityDataModule` (``seed``,
    ``seq_len``, ``test_sequences``, …) except ``repeat_distance``.
    """
    trainer = L.Trainer(devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    rows = []
    try:
        for distance in repeat_distances:
            module.measure_test_energy = distance == energy_at
            # inf: the test set is drawn fresh either way; nothing to cache for the sweep.
            data = FamiliarityDataModule(**{**data_options, "mode": "inf"},
                                         repeat_distance=distance)
            metrics = trainer.test(module, data, verbose=False)[0]
            row: dict[str, Any] = {"repeat_distance": distance}
            row.update({key: metrics[f"test/{key}"] for key in ("acc", "tpr", "fpr", "loss")})
            if module.measure_test_energy:
                row["energy"] = metrics["test/energy"]
                row["energy_per_sequence"] = metrics["test/energy_per_sequence"]
            rows.append(row)
    finally:
        module.measure_test_energy = True
    return rows
