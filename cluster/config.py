"""One typed config for the whole cluster.

Sources, strongest first: `MICROTURN_<SECTION>_<KEY>` environment variables (for example
`MICROTURN_REDIS_URL`, `MICROTURN_FOREGROUND_MAX_SESSIONS`), a YAML file, then defaults that run
on a 2-core laptop. An invalid value fails at start with `ConfigError`, naming the key and where
to set it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MICROTURN_"


class ConfigError(ValueError):
    """A config value is missing or wrong; the message names the key and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(Section):
    """Where the event bus lives: an external server, or one microturn starts itself."""

    url: str | None = Field(None, description="redis:// URL; unset starts an embedded redis-server")
    appendonly: bool = Field(True, description="AOF persistence for the embedded server")
    data_dir: Path | None = Field(None, description="embedded server's folder; unset: a temp dir")


class RayConfig(Section):
    address: str | None = Field(
        default_factory=lambda: os.environ.get("RAY_ADDRESS") or None,
        description="join this cluster; unset starts a local Ray sized for this machine",
    )
    num_cpus: int | None = Field(None, gt=0, description="local Ray only; unset: all cores")
    object_store_mb: int = Field(256, ge=75, description="local Ray only")


class ServeConfig(Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(50151, ge=0, le=65535, description="the gateway's port (0: any free)")


class ForegroundConfig(Section):
    preset: Literal["tiny", "small"] = "tiny"
    checkpoint: Path | None = Field(None, description="a checkpoint folder; unset: the seeded one")
    max_sessions: int = Field(64, gt=0, le=4096, description="preallocated slots per replica")
    tick_ms: int = Field(200, gt=0)
    turn_policy: Literal["model", "vad", "hybrid"] = "hybrid"
    kernels: Literal["invariant", "fast"] = Field(
        "invariant", description="batch-invariant matmuls (default) or plain ones (not reproducible)")
    replicas: int = Field(1, gt=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(0, ge=0, description="torch threads per replica; 0: one per core it may use")
    idle_timeout_s: float = Field(30.0, gt=0)
    resume_grace_s: float = Field(15.0, ge=0)
    # Placement on NVLink GPU nodes, e.g. label_selector {"microturn.io/nvlink": "true"},
    # placement_group_bundles [{"GPU": 1, "CPU": 4}], strategy STRICT_PACK.
    label_selector: dict[str, str] = Field(default_factory=dict)
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "STRICT_PACK"


class BackgroundConfig(Section):
    reasoner: Literal["vllm", "openai", "direct"] = "direct"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    num_cpus: float = Field(0.25, gt=0)


class MicroturnConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

    redis: RedisConfig = Field(default_factory=RedisConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    foreground: ForegroundConfig = Field(default_factory=ForegroundConfig)
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values); the file the defaults.
        return (env_settings, init_settings)


def load_config(path: str | Path | None = None, **overrides: Any) -> MicroturnConfig:
    """Read the YAML file at `path` (if any), apply overrides, then the environment."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"config file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections at the top level")
        values.update(loaded)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if key:
            values.setdefault(section, {})[key] = value
        else:
            values[section] = value
    try:
        return MicroturnConfig(**values)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def _explain(error: ValidationError) -> str:
    lines = ["invalid microturn config:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        env = ENV_PREFIX + "_".join(str(part) for part in item["loc"]).upper()
        shown = "" if item["type"] == "missing" else f" = {item.get('input')!r}"
        lines.append(f"  {key}{shown}: {item['msg']} (set `{key}` in the YAML file or {env})")
    return "\n".join(lines)
