"""Search spaces: the shipped files load and fit the schema; a bad key, value, distribution or combination fails
before any trial starts, naming the file and the key; the command line fixes keys it sets."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from dinowm_core import load_config
from dinowm_core.presets import plan_config
from ray_jobs import tune
from ray_jobs.tune_space import (
    Dist,
    SpaceError,
    as_override,
    check_space,
    fixed_by_command_line,
    list_spaces,
    load_space,
)
from tests.conftest import TINY


def _base(space):
    if space.kind == "train":
        return load_config(space.base_overrides())
    return plan_config(load_config([f"env={space.env}"]), space.base_overrides())


def _write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _train_space(tmp_path, params: str):
    return _write(
        tmp_path, "kind: train\nbase: {env: wall}\nparams:\n" + textwrap.indent(textwrap.dedent(params), "  ")
    )


def _planner_space(tmp_path, params: str, base: str = ""):
    text = "kind: planner\nenv: wall\nbase: {planner.name: mpc_cem" + base + "}\nparams:\n"
    return _write(tmp_path, text + textwrap.indent(textwrap.dedent(params), "  "))


@pytest.mark.parametrize("name", list_spaces())
def test_every_shipped_space_fits_the_schema_and_builds_tune_domains(name):
    space = load_space(name)
    check_space(space, _base(space))
    assert space.kind in name and space.params
    domains = space.tune_domains()
    assert set(domains) == set(space.params)


def test_training_spaces_cover_the_knobs_the_design_names():
    keys = set(load_space("train_wall").params)
    assert {"training.predictor_lr", "training.decoder_lr", "training.action_encoder_lr", "predictor.depth",
            "predictor.heads", "predictor.mlp_dim", "num_hist", "frameskip", "action_emb_dim",
            "proprio_emb_dim", "training.batch_size", "predictor.residual"} <= keys  # fmt: skip
    planner = set(load_space("planner_wall").params) | set(load_space("planner_wall_gd").params)
    assert {"planner.cem.num_samples", "planner.cem.topk", "planner.cem.opt_steps", "planner.horizon",
            "planner.cem.var_scale", "planner.gd.lr", "planner.gd.opt_steps", "planner.objective.alpha",
            "planner.mpc.n_taken_actions"} <= planner  # fmt: skip


def test_a_misspelled_key_is_named_with_its_file(tmp_path):
    path = _train_space(tmp_path, "predictor.dpth: {choice: [2, 4]}\n")
    with pytest.raises(SpaceError) as e:
        check_space(load_space(path), load_config(["env=wall"]))
    assert "predictor.dpth" in str(e.value) and str(path) in str(e.value) and "unknown key" in str(e.value)


def test_a_misspelled_section_is_named_too(tmp_path):
    path = _train_space(tmp_path, "predictr.depth: {choice: [2, 4]}\n")
    with pytest.raises(SpaceError, match=r"predictr\.depth.*predictr: unknown key"):
        check_space(load_space(path), load_config(["env=wall"]))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            "training.predictor_lr: {uniform: [-1.0e-3, 1.0e-3]}",
            r"training\.predictor_lr=-0\.001.*greater than 0",
        ),
        ("predictor.depth: {choice: [0, 2]}", r"predictor\.depth=0 .*greater than 0"),
        ("predictor.depth: {uniform: [2, 6]}", r"predictor\.depth=3\.33+ .*fractional part"),
        ("predictor.dropout: {uniform: [0.0, 1.5]}", r"predictor\.dropout=1\.5 .*less than 1"),
        ("concat: {choice: [channel, tokens]}", r"concat='tokens'"),
    ],
)
def test_an_out_of_range_value_is_named_with_its_key(tmp_path, params, expected):
    with pytest.raises(SpaceError, match=expected):
        check_space(load_space(_train_space(tmp_path, params + "\n")), load_config(["env=wall"]))


def test_an_invalid_combination_fails_naming_both_keys(tmp_path):
    path = _planner_space(
        tmp_path, "planner.cem.topk: {choice: [10, 50]}\nplanner.cem.num_samples: {choice: [30, 100]}\n"
    )
    space = load_space(path)
    with pytest.raises(SpaceError, match=r"combination planner\.cem\.topk=50, planner\.cem\.num_samples=30"):
        check_space(space, _base(space))


def test_a_value_valid_only_with_another_searched_key_passes(tmp_path):
    # num_samples 8 alone is below the base topk (30): with topk searched too, every combination is valid.
    path = _planner_space(
        tmp_path, "planner.cem.num_samples: {grid: [8, 32]}\nplanner.cem.topk: {choice: [4]}\n"
    )
    space = load_space(path)
    check_space(space, _base(space))


def test_horizon_and_executed_actions_are_checked_together(tmp_path):
    path = _planner_space(
        tmp_path, "planner.horizon: {choice: [3, 5]}\nplanner.mpc.n_taken_actions: {choice: [1, 5]}\n"
    )
    space = load_space(path)
    with pytest.raises(SpaceError, match="n_taken_actions"):
        check_space(space, _base(space))


def test_job_settings_are_not_hyperparameters(tmp_path):
    with pytest.raises(SpaceError, match=r"ray\.num_workers: a job setting"):
        check_space(
            load_space(_train_space(tmp_path, "ray.num_workers: {choice: [1, 2]}\n")),
            load_config(["env=wall"]),
        )


def test_a_planner_space_cannot_change_the_model(tmp_path):
    space = load_space(_planner_space(tmp_path, "predictor.depth: {choice: [2, 4]}\n"))
    with pytest.raises(SpaceError, match=r"predictor\.depth: decides the model's shapes"):
        check_space(space, _base(space))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{normal: [0, 1]}", "unknown distribution 'normal'"),
        ("{randint: [1.5, 4]}", "randint takes integers"),
        ("{loguniform: [0, 1]}", "positive low bound"),
        ("{uniform: [2, 1]}", "low < high"),
        ("{uniform: [1]}", r"uniform takes 2 numbers \[low, high\]"),
        ("[1, 2]", "expected one distribution"),
        ("{choice: []}", "non-empty list"),
    ],
)
def test_a_malformed_distribution_is_named(tmp_path, spec, expected):
    path = _train_space(tmp_path, f"training.predictor_lr: {spec}\n")
    with pytest.raises(SpaceError, match=expected) as e:
        load_space(path)
    assert "training.predictor_lr" in str(e.value) and str(path) in str(e.value)


def test_file_level_mistakes_are_named(tmp_path):
    with pytest.raises(SpaceError, match="unknown top-level key"):
        load_space(_write(tmp_path, "kind: train\nparams: {num_hist: {choice: [1]}}\nparam: {}\n"))
    with pytest.raises(SpaceError, match="kind: expected one of train, planner"):
        load_space(_write(tmp_path, "kind: trian\nparams: {num_hist: {choice: [1]}}\n"))
    with pytest.raises(SpaceError, match="no such space"):
        load_space("train_nowhere")
    with pytest.raises(SpaceError, match="early stopping needs a series"):
        load_space(
            _write(
                tmp_path, "kind: planner\nscheduler: {name: asha}\nparams: {planner.horizon: {choice: [5]}}\n"
            )
        )


def test_drawable_values_are_the_bounds_a_point_inside_and_every_choice():
    assert Dist("randint", (1, 4)).drawable() == [1, 3]  # Tune's randint excludes the upper bound
    assert Dist("uniform", (0.5, 2.0)).drawable() == [0.5, 1.0, 2.0]
    assert Dist("loguniform", (1e-4, 1e-1)).drawable() == pytest.approx([1e-4, 1e-3, 1e-1])
    assert Dist("grid", (False, True)).drawable() == [False, True]


@pytest.mark.parametrize("value", [3e-4, 4, True, "mpc_cem", [0, 1], None])
def test_a_sampled_value_becomes_an_override_that_reads_back_the_same(value):
    from dinowm_core.presets import split_overrides

    ((key, text),) = split_overrides([as_override("a.b", value)])
    assert key == "a.b" and yaml.safe_load(text) == value


def test_the_command_line_fixes_a_searched_key(tmp_path):
    space = load_space("train_wall")
    fixed = fixed_by_command_line(space, ["training.batch_size=8", "data.path=/x"])
    assert fixed == {"training.batch_size"}
    assert "training.batch_size" not in space.without(fixed).params


def test_optuna_search_refuses_grid_values(tmp_path):
    space = load_space(_train_space(tmp_path, "predictor.residual: {grid: [false, true]}\n"))
    with pytest.raises(SpaceError, match="grid is not supported with --search optuna"):
        tune._searcher("optuna", space, 0)


def test_a_misspelled_key_fails_the_command_before_anything_starts(tmp_path, capsys):
    path = _train_space(tmp_path, "training.predictr_lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    out = tmp_path / "out"
    code = tune.main([str(path), *TINY, f"output_dir={out}", "data.path=/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training.predictr_lr" in err and str(path) in err
    assert not out.exists()  # no sweep directory, no MLflow store: nothing started


def test_a_planner_space_needs_a_checkpoint(capsys):
    assert tune.main(["planner_wall", "n_evals=2"]) == 2
    assert "give the checkpoint to tune on first" in capsys.readouterr().err


def test_optuna_suggests_values_inside_the_space_reproducibly():
    space = load_space("train_wall")
    suggestions = []
    for _ in range(2):
        searcher = tune._searcher("optuna", space, seed=3)
        searcher.set_search_properties("val/loss", "min", space.tune_domains())
        suggestions.append(searcher.suggest("t1"))
    first = suggestions[0]
    assert first == suggestions[1] and set(first) == set(space.params)
    assert 1e-4 <= first["training.predictor_lr"] <= 2e-3
    assert first["predictor.depth"] in (4, 6, 8) and first["predictor.residual"] in (False, True)
