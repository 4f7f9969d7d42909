"""Per-episode accuracies collected as table rows, each analysis logged with its time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("mamlscope")


class Recorder:
    """Collects per-episode accuracies as rows ``analysis, setting, batchnorm, episode,
    accuracy``; logs each analysis with its time unless ``quiet`` (a training snapshot's
    caller logs one line for the whole snapshot instead)."""

    def __init__(self, episode_ids: Sequence[int], label: str, *, quiet: bool = False) -> None:
        self.episode_ids = np.asarray(episode_ids, dtype=np.int64)
        self.label = label
        self.quiet = quiet
        self.frames: list[pd.DataFrame] = []

    def add(self, analysis: str, setting: str, batchnorm: str, accuracy: np.ndarray) -> None:
        if len(accuracy) != len(self.episode_ids):
            raise RuntimeError(
                f"{analysis} {setting}: {len(accuracy)} accuracies for "
                f"{len(self.episode_ids)} episodes"
            )
        self.frames.append(
            pd.DataFrame(
                {
                    "analysis": analysis,
                    "setting": setting,
                    "batchnorm": batchnorm,
                    "episode": self.episode_ids,
                    "accuracy": np.asarray(accuracy, dtype=np.float64),
                }
            )
        )

    def timed(
        self,
        analysis: str,
        setting: str,
        batchnorm: str,
        compute: Callable[..., np.ndarray],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> np.ndarray:
        """``compute(*args, **kwargs)``, recorded and logged with its time."""
        start = time.perf_counter()
        accuracy = compute(*args, **kwargs)
        self.add(analysis, setting, batchnorm, accuracy)
        if not self.quiet:
            log.info(
                "%s: %s %s (%s): %.2f%% mean, %.1f s",
                self.label,
                analysis,
                setting,
                batchnorm,
                100 * float(np.mean(accuracy)),
                time.perf_counter() - start,
            )
        return accuracy

    def frame(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True)
