import json

import pytest

from dinowm_core.config import Config, ConfigError
from dinowm_core.presets import apply_overrides, list_presets, load_config


def test_reference_defaults():
    cfg = load_config(["encoder.pretrained=false"])
    assert cfg.env.name == "point_maze"  # reference train.yaml default
    assert (cfg.img_size, cfg.encoder_img_size, cfg.num_visual_tokens) == (224, 196, 196)
    assert (cfg.frameskip, cfg.num_hist, cfg.num_pred, cfg.concat) == (5, 3, 1, "channel")
    assert cfg.action_dim == 10
    assert (cfg.predictor.depth, cfg.predictor.heads, cfg.predictor.dim_head, cfg.predictor.mlp_dim) == (
        6,
        16,
        64,
        2048,
    )
    assert cfg.predictor.dropout == 0.1
    assert (cfg.decoder.channel, cfg.decoder.n_res_block, cfg.decoder.n_res_channel) == (384, 4, 128)
    assert not cfg.decoder.quantize
    t = cfg.training
    assert (t.batch_size, t.epochs, t.seed) == (32, 100, 0)
    assert (t.predictor_lr, t.decoder_lr, t.action_encoder_lr, t.encoder_lr) == (5e-4, 3e-4, 5e-4, 1e-6)
    p = cfg.planner
    assert (p.horizon, p.cem.num_samples, p.cem.topk, p.cem.var_scale) == (5, 300, 30, 1.0)


def test_hydra_style_overrides_and_groups():
    cfg = load_config(["env=pusht", "frameskip=5", "num_hist=3", "predictor.depth=4", "planner=mpc_cem"])
    assert cfg.env.name == "pusht" and cfg.env.action_scale == 100.0
    assert cfg.predictor.depth == 4
    assert cfg.planner.name == "mpc_cem" and cfg.planner.mpc.n_taken_actions == 5
    assert cfg.presets["env"] == "pusht"
    # Dotted overrides apply on top of the chosen preset whatever their order on the line.
    cfg = load_config(["env.kwargs.with_target=false", "env=pusht"])
    assert cfg.env.kwargs == {"with_velocity": True, "with_target": False}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("nonsense=1", "nonsense: unknown key"),
        ("predictor.depthh=3", "predictor.depthh: unknown key"),
        ("predictor.depth=abc", "predictor.depth"),
        ("predictor.depth=0", "predictor.depth"),
        ("concat=sideways", "concat"),
        ("img_size=100", "img_size must be a multiple of 16"),
        ("num_pred=2", "num_pred"),
        ("planner.cem.topk=301", "planner.cem.topk"),
        ("planner.horizon=0", "planner.horizon"),
        ("env=nowhere", "env=nowhere: no such preset"),
        ("justakey", "expected key=value"),
        ("encoder.pretrained=true", "encoder.pretrained: no pretrained weights exist"),
        # Job settings are not model keys: ray_jobs.job_config takes them, the model config refuses them.
        ("ray.num_workers=2", "ray: unknown key"),
        ("mlflow.experiment=x", "mlflow: unknown key"),
    ],
)
def test_bad_input_names_the_key(override, needle):
    overrides = ["encoder=dino_tiny", override] if override.startswith("encoder.pretrained") else [override]
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert needle in str(err.value)


def test_json_round_trip_is_lossless():
    cfg = load_config(["env=pusht", "encoder=dino_tiny", "planner=gd", "data.path=/x/y", "eval.seeds=[1,2]"])
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(again.to_json()) == json.loads(cfg.to_json())


def test_apply_overrides_on_existing_config():
    cfg = load_config(["env=wall", "encoder=dino_tiny"])
    cfg2 = apply_overrides(cfg, ["training.batch_size=8", "planner=gd"])
    assert cfg2.training.batch_size == 8 and cfg2.planner.name == "gd" and cfg2.env.name == "wall"
    with pytest.raises(ConfigError, match="training.bsz: unknown key"):
        apply_overrides(cfg, ["training.bsz=8"])


def test_every_preset_validates():
    for group in ("env", "encoder", "predictor", "decoder", "planner"):
        names = list_presets(group)
        assert names, group
        for name in names:
            extra = ["encoder.pretrained=false"] if group != "encoder" else []
            load_config([f"{group}={name}", *extra])
