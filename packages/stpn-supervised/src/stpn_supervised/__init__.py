"""Associative retrieval with STPN and its baselines on PyTorch Lightning (spec §5).

    from stpn_supervised import AssociativeRetrievalDataModule, SequenceClassifier
    trainer.fit(SequenceClassifier("stpn", 11), AssociativeRetrievalDataModule())

``python -m stpn_supervised fit --config ar/stpn`` trains one model from its packaged config;
``python -m stpn_supervised.reproduce_ar`` runs the whole comparison.
"""

from stpn_supervised.data import AssociativeRetrievalDataModule
from stpn_supervised.module import SequenceClassifier

__version__ = "0.1.0"

__all__ = ["AssociativeRetrievalDataModule", "SequenceClassifier"]
