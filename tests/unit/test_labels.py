import numpy as np
import pytest

from mlc_dist.labels import LabelSpace


def test_names_ids_and_multi_hot():
    space = LabelSpace.from_names(["anger", "joy", "neutral"])
    assert space.resolve("joy") == 1 and space.resolve("2") == 2 and space.resolve(0) == 0
    np.testing.assert_array_equal(space.multi_hot(["anger", "2"]), [1, 0, 1])
    with pytest.raises(KeyError):
        space.resolve("fear")
    with pytest.raises(KeyError):
        space.resolve("3")
    assert space.decode([0.9, 0.2, 0.6], [0.5, 0.1, 0.7]) == ["anger", "joy"]


def test_round_trip_and_duplicates(tmp_path):
    space = LabelSpace(("a", "sev"), {"sev": ("0", "1", "2")})
    assert LabelSpace.from_dict(space.to_dict()) == space
    with pytest.raises(ValueError, match="duplicate"):
        LabelSpace.from_names(["a", "a"])
    path = tmp_path / "labels.txt"
    path.write_text("admiration\namusement\n\n")
    assert LabelSpace.from_file(str(path)).names == ("admiration", "amusement")
