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


def test_label_names_file_bom_trailing_blank_lines_and_interior_blank_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffadmiration\r\namusement\n\n\n".encode())
    assert LabelSpace.from_file(str(path)).names == ("admiration", "amusement")
    path.write_text("admiration\namusement\n\nanger\n")
    # ids are line numbers: dropping the blank line would make "anger" id 2 instead of 3.
    with pytest.raises(ValueError, match=r"labels.txt: line 3 is blank"):
        LabelSpace.from_file(str(path))


def test_duplicate_label_names_are_a_user_error_exit_2(tmp_path):
    import typer

    from mlc_dist.cli import EXIT_USER_ERROR, _run
    from mlc_dist.config import DataConfig
    from mlc_dist.data import DataError, label_space_for

    path = tmp_path / "labels.txt"
    path.write_text("joy\nanger\njoy\n")
    cfg = DataConfig(label_list_column="labels", label_names_file=str(path))
    with pytest.raises(DataError, match=r"labels.txt: duplicate label names: \['joy'\]"):
        label_space_for(cfg)
    with pytest.raises(typer.Exit) as exited:
        _run(lambda: label_space_for(cfg))
    assert exited.value.exit_code == EXIT_USER_ERROR
    inline = DataConfig(label_list_column="labels", label_names=["a", "b", "a"])
    with pytest.raises(DataError, match=r"data.label_names: duplicate label names: \['a'\]"):
        label_space_for(inline)
