"""The feature helpers: what each part makes of a batch's columns, bad rows included."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import streaminfer as si
from streaminfer.streams.decode import InvalidRows


def test_parts_sit_side_by_side_in_declared_order() -> None:
    features = si.Features(si.numeric("age", scale=0.1), si.categorical("plan", ["free", "pro"]),
                           si.array("recent", 2))
    x = features({"age": np.array([20.0, np.nan]), "plan": ["pro", None],
                  "recent": [[1.0, 2.0], [3.0, 4.0]]})
    assert x.dtype == np.float32 and features.width == 6
    np.testing.assert_allclose(x, [[2, 0, 1, 0, 1, 2], [0, 0, 0, 1, 3, 4]])


def test_unknown_and_missing_categories_share_the_other_slot() -> None:
    x = si.categorical("plan", ["free", "pro"])({"plan": ["free", "gold", None, "pro"]}, 4)
    assert x.argmax(axis=1).tolist() == [0, 2, 2, 1] and x.sum() == 4


def test_hashed_buckets_are_stable_crc32_of_the_text() -> None:
    """Stable across processes (unlike hash()): a model trained elsewhere sees the same
    slots; repeated values and new ones mixed in one batch all land right."""
    part = si.hashed("country", 8)
    values = ["NO", "IT", "NO", None, "BR", "IT"]
    part({"country": values[:2]}, 2)  # some values seen before, some not
    x = part({"country": values}, len(values))
    assert x.argmax(axis=1).tolist() == [zlib.crc32(str(v).encode()) % 8 for v in values]


def test_arrays_of_the_wrong_length_name_their_rows() -> None:
    part = si.array("recent", 3)
    ok = part({"recent": [[1, 2, 3], [4, 5, 6]]}, 2)
    np.testing.assert_array_equal(ok, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InvalidRows) as caught:  # totals match (3 + 3), rows do not
        part({"recent": [[1, 2], [3, 4, 5, 6], [7, 8, 9]]}, 3)
    assert caught.value.field == "recent" and sorted(caught.value.reasons) == [0, 1]
    padded = si.array("recent", 3, fill=0.0)({"recent": [[1], None, [1, 2, 3, 4]]}, 3)
    np.testing.assert_array_equal(padded, [[1, 0, 0], [0, 0, 0], [1, 2, 3]])
