"""Accuracy-based analyses of what a trained model reuses and what it adapts, per test
episode (Raghu et al. 2020's question, "rapid learning or feature reuse?", asked of
accuracy on the fixed test episodes rather than of representation similarity).

* :mod:`~mamlscope.analyses.features`: frozen penultimate features under a BatchNorm mode;
* :mod:`~mamlscope.analyses.freeze`: the inner loop adapting only the layers from k on;
* :mod:`~mamlscope.analyses.steps`: accuracy against the number of inner steps;
* :mod:`~mamlscope.analyses.centroid`: nearest centroid on frozen features, every method;
* :mod:`~mamlscope.analyses.finetune`: the baseline's fresh head under each mode;
* :mod:`~mamlscope.analyses.run`: the `analyze` job (:func:`run_analyses`), the final
  model's analyses and each training snapshot's (:func:`analyze_snapshots`);
* :mod:`~mamlscope.analyses.training_cka`: per-episode CKA before against after adaptation
  at each snapshot, and its gathered table;
* :mod:`~mamlscope.analyses.recorder`: rows of per-episode accuracies, logged;
* :mod:`~mamlscope.analyses.table`: the long table's columns and the `gather_episodes` job.
"""

from mamlscope.analyses.centroid import centroid_accuracy, nearest_centroid
from mamlscope.analyses.features import FEATURE_MODES, episode_features, has_running_statistics
from mamlscope.analyses.finetune import fresh_head_accuracy
from mamlscope.analyses.freeze import adaptation_accuracy, freeze_settings
from mamlscope.analyses.run import (
    AnalysisSettings,
    analyze_model,
    analyze_snapshots,
    run_analyses,
)
from mamlscope.analyses.steps import step_counts
from mamlscope.analyses.table import COLUMNS, gather_episodes
from mamlscope.analyses.training_cka import gather_training_cka, training_cka

__all__ = [
    "COLUMNS",
    "FEATURE_MODES",
    "AnalysisSettings",
    "adaptation_accuracy",
    "analyze_model",
    "analyze_snapshots",
    "centroid_accuracy",
    "episode_features",
    "fresh_head_accuracy",
    "freeze_settings",
    "gather_episodes",
    "gather_training_cka",
    "has_running_statistics",
    "nearest_centroid",
    "run_analyses",
    "step_counts",
    "training_cka",
]
