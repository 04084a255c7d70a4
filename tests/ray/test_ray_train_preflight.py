"""Bad input fails in the driver, before any worker starts, with a message naming the problem (exit status 2)."""

from __future__ import annotations

import pytest

from tests.ray.conftest import train_overrides

pytestmark = pytest.mark.ray


def _run(args, capsys):
    from ray_jobs import train

    code = train.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "dataset_override", "message"),
    [
        (["training.batch_sise=8"], None, "training.batch_sise: unknown key"),
        (["ray.num_workers=-1"], None, "ray.num_workers"),
        (["ray.num_wrkers=2"], None, "ray.num_wrkers: unknown key"),
        (["mlflow.experimnt=x"], None, "mlflow.experimnt: unknown key"),
        (["ray.num_workers=3"], None, "training.batch_size=8 is not divisible by ray.num_workers=3"),
        (["img_size=128"], None, "dataset frames are 64 px, config img_size is 128"),
        (["env=point_maze"], None, "dataset is for env 'wall', config env.name is 'point_maze'"),
        ([], "/nonexistent/dataset", "does not exist"),
    ],
)
def test_bad_input_fails_before_workers(wall_dataset, tmp_path, capsys, extra, dataset_override, message):
    import ray

    args = train_overrides(wall_dataset, tmp_path, "ray.num_workers=2", *extra)
    if dataset_override:
        args = [a if not a.startswith("data.path=") else f"data.path={dataset_override}" for a in args]
    was_initialized = ray.is_initialized()
    code, err = _run(args, capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "ray_results").exists()  # no Train run directory
    assert not (tmp_path / "mlflow").exists()  # no MLflow run either
    assert ray.is_initialized() == was_initialized  # no cluster started for a run that cannot work


def test_reusing_a_run_name_needs_resume(wall_dataset, tmp_path, capsys):
    (tmp_path / "ray_results" / "wall-taken").mkdir(parents=True)
    code, err = _run([*train_overrides(wall_dataset, tmp_path), "run_name=wall-taken"], capsys)
    assert code == 2 and "resume=wall-taken" in err


def test_unknown_resume_target(wall_dataset, tmp_path, capsys):
    code, err = _run([*train_overrides(wall_dataset, tmp_path), "resume=wall-nope"], capsys)
    assert code == 2 and "resume=wall-nope" in err


def test_job_keys_are_split_from_the_model_keys():
    from ray_jobs.job_config import load_run_config, split_job_overrides

    line = [
        "env=wall",
        "ray.num_workers=2",
        "data.path=/d",
        "mlflow.experiment=x",
        "rayon=1",
        "ray.use_gpu=false",
    ]
    core, job = split_job_overrides(line)
    assert core == ["env=wall", "data.path=/d", "rayon=1"]
    assert job == ["ray.num_workers=2", "mlflow.experiment=x", "ray.use_gpu=false"]
    cfg, job_cfg = load_run_config(["encoder.pretrained=false", *line[:4]])
    assert cfg.data.path == "/d" and not {"ray", "mlflow"} & set(cfg.model_dump())
    assert (job_cfg.ray.num_workers, job_cfg.mlflow.experiment) == (2, "x")
    assert job_cfg.mlflow.register_model == "dinowm-world-model"  # conf/job.yaml's default


def _no_mlflow_no_run(out):
    assert not (out / "ray_results").exists() and not (out / "mlflow").exists()


def test_missing_dinov2_weights_fail_in_the_driver(wall_dataset, tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty hub and HF caches: nothing to find
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    was_initialized = ray.is_initialized()
    args = [*train_overrides(wall_dataset, tmp_path), "encoder=dino", "encoder.pretrained=true"]
    code, err = _run(args, capsys)
    assert code == 2 and "no pretrained weights for dinov2_vits14" in err and "encoder.weights=" in err, err
    _no_mlflow_no_run(tmp_path)
    assert ray.is_initialized() == was_initialized


def test_resume_from_a_checkpoint_of_another_model_fails_in_the_driver(wall_dataset, tmp_path, capsys):
    from dinowm_core import build_world_model, save_world_model
    from ray_jobs.job_config import load_run_config

    cfg, _ = load_run_config(train_overrides(wall_dataset, tmp_path))
    save_world_model(build_world_model(cfg), tmp_path / "ckpt")
    out = tmp_path / "out"
    args = [*train_overrides(wall_dataset, out, "predictor.depth=1"), f"resume={tmp_path / 'ckpt'}"]
    code, err = _run(args, capsys)
    assert code == 2 and "changes the model (predictor.depth 2 -> 1)" in err, err
    _no_mlflow_no_run(out)


def test_relative_paths_mean_the_users_directory(wall_dataset, tmp_path, monkeypatch):
    """Ray workers run elsewhere: every path typed on the command line is made absolute in the driver."""
    from ray_jobs.job_config import load_run_config

    monkeypatch.chdir(wall_dataset.parent)
    cfg, job = load_run_config([*train_overrides(wall_dataset.name, "out"), "ray.storage_path=runs",
                                "mlflow.tracking_uri=sqlite:///db/mlflow.db"])  # fmt: skip
    base = wall_dataset.parent
    assert cfg.data.path == str(wall_dataset) and cfg.output_dir == str(base / "out")
    assert job.ray.storage_path == str(base / "runs")
    assert job.mlflow.tracking_uri == f"sqlite:///{base / 'db' / 'mlflow.db'}"


def test_a_corrupted_shard_fails_in_the_driver(wall_dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(wall_dataset, data)
    shard = sorted(data.glob("*.arrow"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the checksum tells
    shard.write_bytes(bytes(raw))
    args = [
        a if not a.startswith("data.path=") else f"data.path={data}"
        for a in train_overrides(wall_dataset, tmp_path)
    ]
    code, err = _run(args, capsys)
    assert code == 2 and shard.name in err and "dinowm data verify" in err, err
    _no_mlflow_no_run(tmp_path)


def test_episodes_shorter_than_a_window_fail_in_the_driver(tmp_path, capsys):
    from dinowm_core.data.generate import generate

    data = tmp_path / "short"
    generate("wall", 4, 3, data, seed=0, img_size=64, progress=False)  # 3 steps; a window needs (3 + 1) * 5
    code, err = _run(train_overrides(data, tmp_path), capsys)
    assert code == 2 and "no train window" in err and "20 steps" in err, err
    _no_mlflow_no_run(tmp_path)
