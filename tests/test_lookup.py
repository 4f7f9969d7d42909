"""Pool and label lookups shared by training, evaluation and the feature studies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mamlscope.data.lookup import class_labels, pool_classes, pool_ids
from mamlscope.errors import DataError

INDEX = pd.DataFrame({"example_id": [0, 1, 2, 3, 4, 5], "class_id": [7, 3, 7, 5, 3, 5]})
POOLS = pd.DataFrame(
    {"example_id": [4, 0, 1, 3, 2, 5], "pool": ["train", "train", "train", "val", "test", "test"]}
)


def test_pool_ids_in_table_order():
    assert pool_ids(POOLS, "train").tolist() == [4, 0, 1]
    assert pool_ids(POOLS, "test").dtype == np.int64
    with pytest.raises(DataError, match="unknown pool 'tset'"):
        pool_ids(POOLS, "tset")


def test_pool_classes_are_sorted_and_unique():
    assert pool_classes(INDEX, POOLS, "train").tolist() == [3, 7]
    assert pool_classes(INDEX, POOLS, "test").tolist() == [5, 7]


def test_class_labels_number_the_given_classes_and_mark_the_others():
    labels = class_labels(INDEX, np.array([3, 7]))
    assert labels.tolist() == [1, 0, 1, -1, 0, -1]
