"""`dinowm import-checkpoint`: an original DINO-WM run (pickled modules) becomes our checkpoint.

The imported model predicts, rolls out and decodes exactly as the original modules do; the file is read without
running code from it (a ``__reduce__`` payload is refused and never runs); the CLI writes the directory or exits 2
writing nothing; the result loads with our loader, plans and serves.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from dinowm_core import load_world_model
from dinowm_core.training.importers import (
    StateMappingError,
    UnsafeCheckpointError,
    import_original_checkpoint,
    load_original_checkpoint,
)
from dinowm_core.training.importers.original_checkpoint import PUSHT_NORMALIZATION
from ray_jobs.cli import app
from tests.core.original_fixture import (
    SIZES,
    build_original,
    checkpoint_dict,
    hydra_config,
    write_original_run,
)

TINY_ENCODER = ["encoder=dino_tiny"]  # the run's DINOv2 is replaced by the offline encoder of the same width
ATOL = 1e-5


@pytest.fixture(scope="module")
def original():
    return build_original()


@pytest.fixture(scope="module")
def run_dir(original, tmp_path_factory):
    return write_original_run(tmp_path_factory.mktemp("original") / "run", original)


@pytest.fixture(scope="module")
def imported(run_dir, tmp_path_factory):
    return import_original_checkpoint(run_dir, tmp_path_factory.mktemp("ours") / "ckpt", TINY_ENCODER)


@pytest.fixture(scope="module")
def ours(imported):
    return load_world_model(imported).eval()


def _inputs(b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = SIZES
    visual = torch.randn(b, t, s["num_patches"], s["visual_dim"], generator=g)
    return (
        visual,
        torch.randn(b, t, s["proprio_in"], generator=g),
        torch.randn(b, t, s["action_in"], generator=g),
    )


def _obs(visual: torch.Tensor, proprio: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"visual_tokens": visual, "proprio": proprio}


def _run_cli(*args: str):
    return CliRunner().invoke(app, ["import-checkpoint", *args])


# ---- the fixture really is the original's format -----------------------------------------------------------------


def test_the_original_modules_are_gone_after_saving(run_dir):
    assert "models.vit" not in sys.modules and "models" not in sys.modules
    with pytest.raises(ModuleNotFoundError):  # so the import cannot lean on the original's code
        importlib.import_module("models.vit")


def test_the_file_pickles_whole_modules_and_optimizers(run_dir):
    ckpt, loader = load_original_checkpoint(run_dir / "checkpoints" / "model_latest.pth")
    assert loader == "restricted"
    assert {k: getattr(v, "qualname", type(v).__name__) for k, v in ckpt.items()} == {
        "epoch": "int", "predictor": "models.vit.ViTPredictor", "decoder": "models.vqvae.VQVAE",
        "action_encoder": "models.proprio.ProprioceptiveEmbedding",
        "proprio_encoder": "models.proprio.ProprioceptiveEmbedding",
        "predictor_optimizer": "torch.optim.adamw.AdamW", "decoder_optimizer": "torch.optim.adam.Adam",
    }  # fmt: skip


# ---- equal predictions -------------------------------------------------------------------------------------------


@torch.no_grad()
def test_predictions_equal_the_original_forward(original, ours):
    visual, proprio, act = _inputs(b=3, t=SIZES["num_hist"])
    z_original = original.encode(visual, proprio, act)
    z_ours = ours.encode(_obs(visual, proprio), act)
    torch.testing.assert_close(z_ours, z_original, rtol=0, atol=ATOL)
    for t in (1, 2, 3):  # fewer frames than num_hist: the mask and positions are sliced alike
        pred = original.predict(z_original[:, :t])
        assert pred.abs().mean() > 0.1
        torch.testing.assert_close(ours.predict(z_original[:, :t]), pred, rtol=0, atol=ATOL)


@torch.no_grad()
def test_rollout_equals_the_original_rollout(original, ours):
    visual, proprio, _ = _inputs(b=2, t=1, seed=1)
    act = _inputs(b=2, t=6, seed=2)[2]
    z_obs_original, z_original = original.rollout(visual, proprio, act)
    z_obs_ours, z_ours = ours.rollout(_obs(visual, proprio), act)
    assert (
        z_ours.shape
        == z_original.shape
        == (2, 7, SIZES["num_patches"], SIZES["visual_dim"] + 2 * SIZES["emb"])
    )
    torch.testing.assert_close(z_ours, z_original, rtol=0, atol=ATOL)
    for key in ("visual", "proprio"):
        torch.testing.assert_close(z_obs_ours[key], z_obs_original[key], rtol=0, atol=ATOL)


@torch.no_grad()
def test_decoded_images_equal_the_original_decoder(original, ours):
    visual = _inputs(b=2, t=2, seed=3)[0]
    images, _ = original.decode_obs(visual)
    assert images.shape == (2, 2, 3, 64, 64)
    torch.testing.assert_close(ours.decode_visual(visual)[0], images, rtol=0, atol=ATOL)


# ---- what the import records ------------------------------------------------------------------------------------


def test_import_json_records_the_original_config_and_the_mapping(imported, ours):
    record = json.loads((imported / "import.json").read_text())
    assert record["original_config"] == hydra_config()
    assert record["loader"] == "restricted" and record["epoch"] == 7
    assert record["not_imported"] == ["decoder_optimizer", "predictor_optimizer"]
    assert record["overrides"] == TINY_ENCODER
    mapping = {r["original"]: r["ours"] for r in record["config_mapping"]}
    assert mapping["concat_dim"] == "concat=channel" and mapping["predictor.heads"] == "predictor.heads=4"
    assert "wandb_run_id" in record["ignored_original_keys"]
    renamed = record["state_mapping"]["predictor"]["renamed"]
    assert renamed["transformer.layers.1.0.to_qkv.weight"] == "layers.1.0.to_qkv.weight"
    assert renamed["transformer.norm.weight"] == "norm.weight"
    assert record["state_mapping"]["action_encoder"]["renamed"] == {
        "patch_embed.weight": "proj.weight", "patch_embed.bias": "proj.bias"
    }  # fmt: skip
    assert any("quantize_b.embed" in n for n in record["state_mapping"]["decoder"]["notes"])
    cfg = ours.cfg
    assert (cfg.env.name, cfg.img_size, cfg.num_hist, cfg.frameskip, cfg.concat) == (
        "wall",
        64,
        3,
        5,
        "channel",
    )
    p = cfg.predictor
    assert (p.depth, p.heads, p.dim_head, p.mlp_dim, p.dropout, p.residual) == (2, 4, 16, 96, 0.1, False)
    assert (cfg.decoder.channel, cfg.decoder.n_res_block, cfg.decoder.quantize) == (32, 1, False)
    assert json.loads((imported / "meta.json").read_text())["imported_from"]["format"] == "dino_wm"


def test_pusht_gets_the_original_normalization_constants(tmp_path):
    sizes = {**SIZES, "proprio_in": 4}
    config = hydra_config(sizes)
    config["env"] = {**config["env"], "name": "pusht", "kwargs": {"with_velocity": True, "with_target": True}}
    run = write_original_run(tmp_path / "run", build_original(sizes), config)
    out = import_original_checkpoint(run, tmp_path / "ours", TINY_ENCODER)
    assert load_world_model(out).normalization == PUSHT_NORMALIZATION


def test_other_envs_take_the_statistics_of_our_imported_dataset(run_dir, tmp_path):
    from dinowm_core.data.generate import generate
    from dinowm_core.data.normalization import Normalizer
    from dinowm_core.data.store import TrajectoryStore

    data = generate("wall", 2, 20, tmp_path / "wall_ds", seed=0, workers=1, img_size=64, progress=False)
    out = import_original_checkpoint(run_dir, tmp_path / "ours", TINY_ENCODER, dataset=data)
    expected = Normalizer.from_manifest(TrajectoryStore(data).manifest).to_dict()
    assert load_world_model(out).normalization == expected
    assert json.loads((out / "import.json").read_text())["normalization"] == f"dataset {data}"
    without = import_original_checkpoint(run_dir, tmp_path / "bare", TINY_ENCODER)
    assert not (without / "normalization.json").exists()  # planning warns and uses the identity


def test_a_checkpoint_of_state_dicts_loads_with_torch_safe_loader(original, tmp_path):
    payload = {k: (v.state_dict() if isinstance(v, torch.nn.Module) else v) for k, v in checkpoint_dict(original).items()
               if "optimizer" not in k}  # fmt: skip
    run = write_original_run(tmp_path / "run", original, payload=payload)
    out = import_original_checkpoint(run, tmp_path / "ours", TINY_ENCODER)
    assert json.loads((out / "import.json").read_text())["loader"] == "weights_only"
    visual, proprio, act = _inputs(b=2, t=3, seed=4)
    with torch.no_grad():
        z = original.encode(visual, proprio, act)
        torch.testing.assert_close(
            load_world_model(out).eval().predict(z), original.predict(z), rtol=0, atol=ATOL
        )


def test_one_head_as_wide_as_the_model_gets_an_identity_output_projection(tmp_path):
    sizes = {
        **SIZES,
        "heads": 1,
        "dim_head": SIZES["visual_dim"] + 2 * SIZES["emb"],
    }  # original: to_out = Identity
    original = build_original(sizes)
    assert isinstance(original.predictor.transformer.layers[0][0].to_out, torch.nn.Identity)
    run = write_original_run(tmp_path / "run", original, hydra_config(sizes))
    out = import_original_checkpoint(run, tmp_path / "ours", TINY_ENCODER)
    z = original.encode(*_inputs(b=2, t=3, seed=6))
    with torch.no_grad():
        torch.testing.assert_close(
            load_world_model(out).eval().predict(z), original.predict(z), rtol=0, atol=ATOL
        )


def test_a_fork_that_saves_the_mask_as_a_buffer_imports_too(tmp_path):
    original = build_original()
    for attn, _ in original.predictor.transformer.layers:
        mask = attn.bias
        del attn.bias
        attn.register_buffer("bias", mask)
    run = write_original_run(tmp_path / "run", original)
    out = import_original_checkpoint(run, tmp_path / "ours", TINY_ENCODER)
    notes = json.loads((out / "import.json").read_text())["state_mapping"]["predictor"]["notes"]
    assert "dropped 2 saved attention masks (ours is built from the config)" in notes
    z = original.encode(*_inputs(b=2, t=3, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(
            load_world_model(out).eval().predict(z), original.predict(z), rtol=0, atol=ATOL
        )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("predictor.heads=2", "heads = 4 in the checkpoint"),
        ("num_hist=2", "attention mask (48, 48) is not the frame-causal mask of 2 frames x 16 patches"),
        ("predictor.mlp_dim=64", "net.1.weight: shape (96, 84)"),
    ],
)
def test_a_config_that_does_not_match_the_weights_names_the_key(run_dir, tmp_path, override, message):
    with pytest.raises(StateMappingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_original_checkpoint(run_dir, tmp_path / "ours", [*TINY_ENCODER, override])
    assert not (tmp_path / "ours").exists() and not list(tmp_path.iterdir())


# ---- the file runs no code -----------------------------------------------------------------------------------


class _Payload:
    def __init__(self, make):
        self.make = make

    def __reduce__(self):
        return self.make()


def _payloads(marker):
    cmd = f"touch {marker}"
    return {
        "posix.system": lambda: (os.system, (cmd,)),
        "builtins.eval": lambda: (builtins.eval, (f"__import__('os').system({cmd!r})",)),
        "subprocess.Popen": lambda: (subprocess.Popen, (["touch", str(marker)],)),
        "functools.partial": lambda: (functools.partial(os.system, cmd), ()),
    }


@pytest.mark.parametrize(
    "refused", ["posix.system", "builtins.eval", "subprocess.Popen", "functools.partial"]
)
def test_a_reduce_payload_is_refused_and_never_runs(original, tmp_path, refused):
    marker = tmp_path / "pwned"
    payload = {**checkpoint_dict(original), "predictor": _Payload(_payloads(marker)[refused])}
    run = write_original_run(tmp_path / "run", original, payload=payload)
    with pytest.raises(UnsafeCheckpointError, match=f"refused to load {refused}"):
        import_original_checkpoint(run, tmp_path / "ours", TINY_ENCODER)
    assert not marker.exists() and not (tmp_path / "ours").exists()


def test_a_payload_hidden_inside_a_module_or_in_a_plain_pickle_is_refused(original, tmp_path):
    marker = tmp_path / "pwned"
    evil = _Payload(_payloads(marker)["posix.system"])
    original.predictor.transformer.layers[0][0].extra = evil  # an attribute deep inside an allowed module
    try:
        run = write_original_run(tmp_path / "run", original)
    finally:
        del original.predictor.transformer.layers[0][0].extra
    with pytest.raises(UnsafeCheckpointError, match="refused to load posix.system"):
        load_original_checkpoint(run / "checkpoints" / "model_latest.pth")
    raw = tmp_path / "raw.pth"  # not a torch zip archive: torch's legacy path goes through the same unpickler
    raw.write_bytes(pickle.dumps({"predictor": evil}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused to load posix.system"):
        load_original_checkpoint(raw)
    assert not marker.exists()


class Mystery(torch.nn.Module):
    pass


def test_an_unknown_class_is_refused_by_name(original, tmp_path):
    run = write_original_run(
        tmp_path / "run", original, payload={**checkpoint_dict(original), "decoder": Mystery()}
    )
    res = _run_cli(str(run), *TINY_ENCODER, "--out", str(tmp_path / "ours"))
    assert res.exit_code == 2, res.output
    assert f"refused to load {Mystery.__module__}.Mystery:" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "ours").exists()


# ---- the command line ----------------------------------------------------------------------------------------


def test_cli_writes_the_checkpoint_and_exits_0(run_dir, tmp_path):
    out = tmp_path / "nested" / "ckpt"
    res = _run_cli(str(run_dir), *TINY_ENCODER, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "meta.json", "import.json"}
    assert [p.name for p in out.parent.iterdir()] == ["ckpt"]  # no staging directory left behind


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_run", "not a directory"),
        ("no_hydra", "hydra.yaml: missing"),
        ("no_checkpoint", "model_latest.pth: missing"),
        ("out_exists", "already exists"),
        ("bad_override", "predictor.nope: unknown key"),
        ("not_a_checkpoint", "not a readable torch checkpoint"),
    ],
)
def test_cli_bad_paths_exit_2_and_write_nothing(run_dir, tmp_path, case, message):
    run, out = tmp_path / "run", tmp_path / "out"
    extra = []
    if case == "missing_run":
        run = tmp_path / "nowhere"
    elif case in ("no_hydra", "no_checkpoint", "not_a_checkpoint"):
        (run / "checkpoints").mkdir(parents=True)
        if case != "no_hydra":
            (run / "hydra.yaml").write_text((run_dir / "hydra.yaml").read_text())
        if case == "not_a_checkpoint":
            (run / "checkpoints" / "model_latest.pth").write_bytes(b"not a checkpoint")
        elif case == "no_hydra":
            (run / "checkpoints" / "model_latest.pth").write_bytes(b"")
    else:
        run = run_dir
        if case == "out_exists":
            out.mkdir()
        else:
            extra = ["predictor.nope=1"]
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _run_cli(str(run), *TINY_ENCODER, *extra, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "out_exists":
        assert not list(out.iterdir())


# ---- our loader, planner and service take it ------------------------------------------------------------------


def test_our_planner_plans_with_the_imported_checkpoint(imported):
    from dinowm_core.evaluation.adapter import ModelAdapter
    from dinowm_core.planning.planner import make_planner
    from tests.planning.plan_helpers import cem_cfg
    from tests.serving.serving_helpers import model_obs

    wm = load_world_model(
        imported
    )  # our normal loader: config.json + safetensors, encoder fingerprint checked
    adapter = ModelAdapter(wm)
    planner = make_planner(cem_cfg(horizon=3, num_samples=8, topk=2, opt_steps=2), wm)
    z_obs, z_goal = adapter.encode(model_obs([0, 1])), adapter.encode(model_obs([2, 3]))
    result, state = planner.plan(z_obs, z_goal, planner.init_state(2, [0, 1]))
    actions = adapter.to_env_actions(result.execute)
    assert actions.shape == (2, 3 * 5, 2) and torch.isfinite(torch.as_tensor(actions)).all()
    assert torch.isfinite(result.loss).all()


def test_the_planning_service_serves_a_plan_from_it(imported):
    from serving.schemas import PlanRequest
    from serving.service import PlanningService
    from tests.serving.serving_helpers import obs

    service = PlanningService.load(str(imported))
    planner = {"name": "cem", "num_samples": 8, "topk": 2, "opt_steps": 1}
    request = PlanRequest.model_validate({"obs": obs(0), "goal": obs(1), "seed": 3, "planner": planner})
    (response,) = service.plan([request])
    assert len(response.actions) == 5 * 5 and len(response.actions[0]) == 2
    assert torch.isfinite(torch.tensor(response.actions)).all()
    assert json.loads(response.model_dump_json())["actions"] == response.actions  # the HTTP app's JSON answer
