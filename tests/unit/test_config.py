import pytest
import yaml

from mlc_dist.config import DEFAULT_MODEL, JobConfigError, apply_overrides, load_job


def write(tmp_path, tree, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


BASE = {"run": {"name": "r"}, "data": {"train": "train.csv", "label_columns": ["a", "b"]}}


def test_defaults_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = load_job(write(tmp_path, BASE))
    assert job.model.name == DEFAULT_MODEL
    assert job.train.precision == "auto" and job.train.strategy == "ddp"
    assert job.data.train == str(tmp_path / "train.csv")
    assert job.model_dir == str(tmp_path / "runs" / "r" / "model")


def test_overrides_are_typed_and_reach_any_key(tmp_path):
    job = load_job(write(tmp_path, BASE), ["train.lr=2e-5", "scaling.num_workers=4",
                                            "data.id_columns=[id, sub]", "train.max_steps=200"])
    assert job.train.lr == 2e-5 and job.scaling.num_workers == 4
    assert job.data.id_columns == ["id", "sub"] and job.train.max_steps == 200


@pytest.mark.parametrize("override,key", [
    ("train.lrr=1", "train.lrr"),
    ("train.lr=-1", "train.lr"),
    ("train.precision=fp8", "train.precision"),
    ("scaling.num_workers=0", "scaling.num_workers"),
    ("bogus.x=1", "bogus"),
])
def test_bad_keys_and_values_name_the_key_and_file(tmp_path, override, key):
    path = write(tmp_path, BASE)
    with pytest.raises(JobConfigError) as err:
        load_job(path, [override])
    assert str(path) in str(err.value) and key in str(err.value)


def test_fp16_on_cpu_is_rejected(tmp_path):
    with pytest.raises(JobConfigError, match="train.precision"):
        load_job(write(tmp_path, BASE), ["train.precision=fp16"])
    assert load_job(write(tmp_path, BASE), ["train.precision=fp16",
                                            "scaling.use_gpu=true"]).train.precision == "fp16"


def test_label_layouts_are_exclusive(tmp_path):
    tree = {"run": {"name": "r"}, "data": {"label_columns": ["a"], "label_list_column": "l",
                                           "label_names": ["a"]}}
    with pytest.raises(JobConfigError, match="one label layout"):
        load_job(write(tmp_path, tree))
    tree = {"run": {"name": "r"}, "data": {"label_list_column": "l"}}
    with pytest.raises(JobConfigError, match="label_names"):
        load_job(write(tmp_path, tree))


def test_missing_run_name_and_bad_yaml(tmp_path):
    with pytest.raises(JobConfigError, match="run: required"):
        load_job(write(tmp_path, {"data": {}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [\n")
    with pytest.raises(JobConfigError, match="not valid YAML"):
        load_job(bad)
    with pytest.raises(JobConfigError, match="not found"):
        load_job(tmp_path / "nope.yaml")


def test_override_syntax_errors():
    with pytest.raises(JobConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_shipped_jobs_validate(monkeypatch):
    from pathlib import Path

    jobs = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
    assert jobs
    for path in jobs:
        load_job(path)


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "a\\b"])
def test_run_name_stays_inside_output_dir(tmp_path, name):
    path = write(tmp_path, BASE)
    with pytest.raises(JobConfigError) as err:
        load_job(path, [f"run.name={name!r}"])
    assert str(path) in str(err.value) and "run.name" in str(err.value)
    assert load_job(path, ["run.name=a.b-c_1"]).run.name == "a.b-c_1"
