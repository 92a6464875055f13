"""What a run can train and what it is compared with, each named once: the configuration value
(``train.method``), the name the console, pictures and tables show, and the prefix of its MLflow metric keys.

    >>> METHODS["flowgmm_cons"].display, LABELS_ONLY.value, LABELS_ONLY.key
    ('FlowGMM-cons', 'labels_only', 'labels_only_flow')
    >>> method_name("labels_only"), ANCHORS["label_spreading"]
    ('labels-only flow', 'label spreading')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    value: str  # train.method
    display: str  # console, tables, pictures
    key: str  # MLflow metric prefix when it is a baseline of another run (``<key>_test_accuracy``)


FLOWGMM = Method("flowgmm", "FlowGMM", "flowgmm")
FLOWGMM_CONS = Method("flowgmm_cons", "FlowGMM-cons", "flowgmm_cons")
LABELS_ONLY = Method("labels_only", "labels-only flow", "labels_only_flow")  # the same flow on the labeled rows only
METHODS: dict[str, Method] = {m.value: m for m in (FLOWGMM, FLOWGMM_CONS, LABELS_ONLY)}

# the classical anchors every evaluation fits on the run's split: key (``baseline_<key>_test_accuracy``) -> name
ANCHORS: dict[str, str] = {
    "logreg": "logistic regression",
    "knn": "k-nearest neighbours",
    "label_spreading": "label spreading",
    "self_training": "self-training",
}


def method_name(value: str) -> str:
    """``train.method`` as people read it."""
    return METHODS[value].display if value in METHODS else value
