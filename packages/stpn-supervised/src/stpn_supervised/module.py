"""``SequenceClassifier``: any ``stpn_core`` model, a linear read-out of its last step, and the
paper's training and energy measurement (docs/model.md §4, §5.2–5.3)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as nnf
from stpn_core import MODELS, build_model, count_parameters
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from stpn_supervised.data import VOCAB_SIZE


class StepProfile(Metric):
    """Mean over sequences of a ``(B, T)`` trace, kept per step: the energy profile along the
    sequence. Sums and counts are reduced across processes, so DDP gives the full-set mean.
    States have the metric's dtype (torch's default, float32), which every accelerator supports
    (MPS has no float64); ``set_dtype`` changes it."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(0, dtype=self.dtype), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=self.dtype), dist_reduce_fx="sum")

    def update(self, trace: Tensor) -> None:
        summed = trace.detach().to(self.dtype).sum(dim=0)
        self.total = summed if self.total.numel() == 0 else self.total + summed
        self.count = self.count + trace.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


class RecurrentTaskModule(L.LightningModule):
    """What every task module shares: a ``stpn_core`` model as its core, Adam, and the parameter
    count (heads included) in the logger. Subclasses add their read-out, then call
    :meth:`_count_parameters`.

    Args:
        name: a name of ``stpn_core.MODELS`` (``stpn``, ``lstm``, ``fast_weights``, …).
        hidden_size: units of the recurrent model.
        model_options: keyword options of ``stpn_core.build_model`` for that model.
        input_size: features of each input step.
        lr: Adam learning rate (paper: 1e-3, default betas, no weight decay).
    """

    def __init__(self, name: str, hidden_size: int, model_options: dict[str, Any] | None,
                 input_size: int, lr: float) -> None:
        super().__init__()
        if name not in MODELS:
            raise ValueError(f"name: expected one of {', '.join(MODELS)}; got {name!r}")
        for argument, value in (("hidden_size", hidden_size), ("input_size", input_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument}: expected a positive int, got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        self.model_name, self.lr = name, float(lr)
        self.core = build_model(name, input_size, hidden_size, **(model_options or {}))
        self.num_parameters = 0

    def _count_parameters(self) -> None:
        self.num_parameters = count_parameters(self)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams({"params": self.num_parameters})


class SequenceClassifier(RecurrentTaskModule):
    """Classify a sequence from the model's output at its last step (many-to-one).

    Args:
        name, hidden_size, model_options, lr: see :class:`RecurrentTaskModule` (the paper's
            budget-matched sizes are in the configs and in ``stpn_core.paper_preset("ar", m)``).
        input_size, num_classes: one-hot width and classes (37 for associative retrieval).
    """

    def __init__(
        self,
        name: str = "stpn",
        hidden_size: int = 11,
        model_options: dict[str, Any] | None = None,
        input_size: int = VOCAB_SIZE,
        num_classes: int = VOCAB_SIZE,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(name, hidden_size, model_options, input_size, lr)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.save_hyperparameters()
        self.readout = nn.Linear(self.core.output_size, num_classes)
        self._count_parameters()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_energy, self.test_energy = MeanMetric(), MeanMetric()
        self.test_energy_sequence = MeanMetric()
        self.test_profile = StepProfile()

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` from the output at the last step; the state starts at zero
        for every sequence (the paper's stateless setting)."""
        output, _ = self.core(x)
        return self.readout(output[:, -1])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nnf.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Accuracy and energy of one evaluation batch. Energy: per-step energy summed over
        units (``model.energy``), averaged over the steps, then over all sequences."""
        x, y = batch
        logits = self(x)
        energy = self.core.energy(x)
        accuracy = self.val_acc if stage == "val" else self.test_acc
        mean_energy = self.val_energy if stage == "val" else self.test_energy
        accuracy(logits, y)
        mean_energy(energy.mean(dim=1))
        self.log(f"{stage}/loss", nnf.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        self.log(f"{stage}/energy", mean_energy)
        return energy

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        energy = self._evaluate(batch, "test")
        self.test_energy_sequence.update(energy.sum(dim=1))
        self.test_profile.update(energy)
        self.log("test/energy_per_sequence", self.test_energy_sequence)

    def on_test_epoch_start(self) -> None:
        self.test_profile.reset()

    def on_test_epoch_end(self) -> None:
        """Keep the synchronised per-step profile for ``metrics.json`` (a list is no scalar to
        log)."""
        self.energy_profile = self.test_profile.compute().tolist()
