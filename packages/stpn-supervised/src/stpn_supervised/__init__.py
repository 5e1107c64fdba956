"""Associative retrieval (docs/model.md §5) and continual familiarity detection with STPN and its
baselines on PyTorch Lightning.

    from stpn_supervised import AssociativeRetrievalDataModule, SequenceClassifier
    trainer.fit(SequenceClassifier("stpn", 11), AssociativeRetrievalDataModule())
    trainer.fit(FamiliarityClassifier("stpn", 27), FamiliarityDataModule(repeat_distance=3))

``python -m stpn_supervised fit --config ar/stpn`` (or ``familiarity/stpnr``) trains one model
from its packaged config; ``python -m stpn_supervised.reproduce_ar`` runs the whole comparison.
"""

from stpn_supervised.data import AssociativeRetrievalDataModule
from stpn_supervised.familiarity import FamiliarityDataModule
from stpn_supervised.familiarity_module import FamiliarityClassifier
from stpn_supervised.module import SequenceClassifier

__version__ = "0.1.0"

__all__ = ["AssociativeRetrievalDataModule", "FamiliarityClassifier", "FamiliarityDataModule",
           "SequenceClassifier"]
