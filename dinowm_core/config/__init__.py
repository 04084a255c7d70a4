"""The typed, validated configuration schema of dinowm: every section and the whole :class:`Config`.

Every model forbids unknown keys, so a typo fails at load time with a message naming the key. Configs
round-trip through JSON without loss (``Config.model_validate_json(cfg.model_dump_json())``). Derived values
(number of patches, action dim after frameskip) are properties, never stored.

Building a config from the YAML presets under ``conf/`` and dotted ``key=value`` overrides is
``dinowm_core.presets`` (``load_config``, ``apply_overrides``, the per-env planning presets). Planning defaults
follow the reference's ``conf/plan*.yaml`` and ``conf/planner/*.yaml`` (docs/reference.md sections 5.3-5.7).
Where a job runs (Ray, MLflow) is not part of the model: ``ray_jobs.job_config`` holds those settings.
"""

from dinowm_core.config.base import DECODER_SCALE, ConfigError, ConfigModel, format_errors
from dinowm_core.config.memory_eval import MEMORY_TASKS, MemoryEvalConfig
from dinowm_core.config.model import (
    DecoderConfig,
    DinoName,
    EncoderConfig,
    EnvConfig,
    MemoryConfig,
    PredictorConfig,
)
from dinowm_core.config.planning import (
    CEMConfig,
    EvalConfig,
    GDConfig,
    ICEMConfig,
    MPCConfig,
    MPPIConfig,
    ObjectiveConfig,
    PlannerConfig,
)
from dinowm_core.config.root import MODEL_KEYS, Config, model_differences
from dinowm_core.config.training import DataConfig, TrainingConfig

__all__ = [
    "DECODER_SCALE", "MEMORY_TASKS", "MODEL_KEYS", "CEMConfig", "Config", "ConfigError", "ConfigModel",
    "DataConfig", "DecoderConfig", "DinoName", "EncoderConfig", "EnvConfig", "EvalConfig", "GDConfig", "ICEMConfig",
    "MPCConfig", "MPPIConfig", "MemoryConfig", "MemoryEvalConfig", "ObjectiveConfig", "PlannerConfig",
    "PredictorConfig", "TrainingConfig",
    "format_errors", "model_differences",
]  # fmt: skip
