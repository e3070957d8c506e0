"""Evaluation metrics: autoPET case metrics (`case`) and the L1DFL paper's lesion-level metrics
(`lesions`)."""

from petseg.evaluation.metrics.case import CONNECTIVITY, CaseScores, case_scores, dice, mask_agreement
from petseg.evaluation.metrics.lesions import (
    CaseEvaluation,
    Detection,
    LesionStats,
    dmax_mm,
    evaluate_case,
    lesion_dice,
    lesion_stats,
    suvmax_detection,
)

__all__ = [
    "CONNECTIVITY",
    "CaseEvaluation",
    "CaseScores",
    "Detection",
    "LesionStats",
    "case_scores",
    "dice",
    "dmax_mm",
    "evaluate_case",
    "lesion_dice",
    "lesion_stats",
    "mask_agreement",
    "suvmax_detection",
]
