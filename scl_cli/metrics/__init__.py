"""Evaluation metrics, importable without the CLI: VQA accuracy (official), retrieval recall@k,
classification accuracy (NLVR2)."""

from scl_cli.metrics.classification import accuracy
from scl_cli.metrics.retrieval import RankedLists, recall_from_rankings, retrieval_recall
from scl_cli.metrics.vqa import normalize_vqa_answer, vqa_accuracy, vqa_scores

__all__ = [
    "RankedLists",
    "accuracy",
    "normalize_vqa_answer",
    "recall_from_rankings",
    "retrieval_recall",
    "vqa_accuracy",
    "vqa_scores",
]
