"""One typed config for the whole cluster.

Sources, strongest first: `MICROTURN_<SECTION>_<KEY>` environment variables (for example
`MICROTURN_REDIS_URL`, `MICROTURN_FOREGROUND_MAX_SESSIONS`), a YAML file, then defaults that run
on a 2-core laptop. An invalid value fails at start with `ConfigError`, naming the key and where
to set it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from cluster.local_api_key import default_key_file

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
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="the gateway's Prometheus /metrics port (0: any free; unset: none)")
    realtime: bool = Field(True, description="serve the OpenAI Realtime WebSocket (/v1/realtime) and the console (/)")
    realtime_port: int | None = Field(None, ge=0, le=65535, description=(
        "the gateway's HTTP port for /v1/realtime and the console (0: any free; unset: grpc_port + 1, "
        "or any free port when grpc_port is 0)"))

    def realtime_port_for(self, grpc_port: int) -> int:
        """The HTTP port to bind next to a gateway on `grpc_port`."""
        if self.realtime_port is not None:
            return self.realtime_port
        return grpc_port + 1 if grpc_port else 0


class ForegroundConfig(Section):
    preset: Literal["tiny", "small"] = "tiny"
    checkpoint: Path | None = Field(None, description="a checkpoint folder; unset: the seeded one")
    max_sessions: int = Field(64, gt=0, le=4096, description="preallocated slots per replica")
    device: Literal["cpu", "cuda"] = Field("cpu", description=(
        "Moshi family: where its weights and per-session state live (cuda: the replica's GPU)"))
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Moshi family: weight and compute dtype")
    tick_ms: int = Field(200, gt=0)
    turn_policy: Literal["auto", "model", "vad", "hybrid"] = Field(
        "auto", description="auto: model with a trained turn head (the shipped default), else hybrid")
    backchannel_max_ms: float = Field(600.0, ge=0, description=(
        "user speech while the model speaks silences it at once but stops it only once it has lasted "
        "longer than this; shorter is an acknowledgement and the model goes on (0: stop at once)"))
    min_end_silence_ms: float = Field(0.0, ge=0, description=(
        "a turn end the detector hears is taken only after this much silence (0: at once); raise it "
        "for speakers who pause between sentences: fewer starts in those gaps, later answers"))
    weave_max_wait_ms: float = Field(1000.0, ge=0, description=(
        "a background result waits at most this long for the user to stop speaking, then is woven"))
    kernels: Literal["invariant", "fast"] = Field(
        "invariant", description="batch-invariant matmuls (default) or plain ones (not reproducible)")
    replicas: int = Field(1, gt=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(0, ge=0, description="torch threads per replica; 0: one per core it may use")
    niceness: int = Field(0, ge=0, le=19, description=(
        "CPU niceness of replica processes; Ray's default for workers is 15, behind every ordinary "
        "process on the node, which a real-time replica must not be"))
    idle_timeout_s: float = Field(30.0, gt=0)
    resume_grace_s: float = Field(15.0, ge=0)
    bind_host: str | None = Field(None, description=(
        "the interface replicas' session ports listen on; unset: 127.0.0.1 for a replica on the machine "
        "of `microturn up`'s gateway, 0.0.0.0 elsewhere (other nodes, and every replica on Kubernetes)"))
    # Placement on NVLink GPU nodes, e.g. label_selector {"microturn.io/nvlink": "true"},
    # placement_group_bundles [{"GPU": 1, "CPU": 4}], strategy STRICT_PACK.
    label_selector: dict[str, str] = Field(default_factory=dict)
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "STRICT_PACK"


class LimitsConfig(Section):
    """Bounds per session, per API key and per event (foreground/serve/session_limits.py,
    foreground/serve/open_rate.py, protos/event_bus.py); a request past one fails alone with
    RESOURCE_EXHAUSTED naming `limits.<key>`."""

    text_queue_bytes: int = Field(16_384, gt=0, description="text waiting to enter the model, per session")
    tool_requests_per_minute: int = Field(20, gt=0, description="client tool requests per session per minute")
    replay_bytes: int = Field(2 << 20, ge=65_536, description=(
        "server messages kept per session for a resume (cover foreground.resume_grace_s: 48 kB/s of audio)"))
    open_deadline_s: float = Field(10.0, gt=0, description="a stream's opening message must come within this")
    opens_per_key_per_second: float = Field(4.0, gt=0, description=(
        "new sessions one API key may open a second, at each gateway and each replica port (resumes are free)"))
    opens_burst: int = Field(64, gt=0, description=(
        "opens one API key may make at once before opens_per_key_per_second applies (one replica's slots)"))
    event_bytes: int = Field(65_536, ge=1024, description=(
        "one event published to a session's stream (EventBus Publish, Realtime tool outputs) and one "
        "tool request's arguments"))
    events_kept_after_close_s: float = Field(60.0, gt=0, description=(
        "a closed session's event stream and its idempotency markers stay in Redis this long "
        "(a reader in flight drains the rest; a Subscribe ends with its session)"))


class TlsConfig(Section):
    """Optional TLS on every gRPC port and channel and on the Realtime HTTP port (`protos/tls.py`).

    Off while no file is named: plaintext, as on loopback. A server (gateway, replica) presents
    `cert_file`; a client verifies servers against `ca_file` (unset: the system's CAs) and, for
    mTLS, presents `client_cert_file` (unset: `cert_file`, so cluster processes use one pair).
    """

    enabled: bool | None = Field(None, description=(
        "unset: on when cert_file or ca_file is set; true with neither: a client that trusts the system's CAs"))
    cert_file: Path | None = Field(None, description="PEM certificate chain servers present (clients too, for mTLS)")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    ca_file: Path | None = Field(None, description=(
        "PEM CA bundle: clients verify servers with it; with require_client_cert, servers verify clients"))
    require_client_cert: bool = Field(False, description="mTLS: servers refuse clients without a cert from ca_file")
    client_cert_file: Path | None = Field(None, description="the certificate clients present (unset: cert_file)")
    client_key_file: Path | None = Field(None, description="PEM private key of client_cert_file")
    server_name: str | None = Field(None, description=(
        "the name clients expect in server certificates instead of the address's host (replicas are "
        "reached by pod IP: give the certificate one name and set it here)"))

    @property
    def on(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return self.cert_file is not None or self.ca_file is not None

    @field_validator("cert_file", "key_file", "ca_file", "client_cert_file", "client_key_file")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @model_validator(mode="after")
    def _check(self) -> TlsConfig:
        for cert, key in (("cert_file", "key_file"), ("client_cert_file", "client_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"tls.{cert} and tls.{key} go together: set both or neither")
        if self.require_client_cert and (self.ca_file is None or self.cert_file is None):
            raise ValueError("tls.require_client_cert needs tls.ca_file (to verify clients) and "
                             "tls.cert_file/key_file (the server's own)")
        return self


class BackgroundConfig(Section):
    """The background pool: reasoner, tools, and scaling on the `mt:jobs` backlog."""

    reasoner: Literal["vllm", "openai", "direct"] = "direct"
    openai_base_url: str = Field("", description="an OpenAI-compatible endpoint, e.g. http://llm:8000/v1")
    openai_model: str = ""
    openai_api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the key, read in the replica")
    openai_timeout_s: float = Field(30.0, gt=0)
    # Extra keyword arguments of the reasoner, e.g. {"model_dir": "/models/x"} for vllm.
    reasoner_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    search_provider: Literal["local", "searxng"] = "local"
    searxng_url: str = ""
    corpus_dir: Path | None = Field(None, description="documents the local search indexes; unset: the shipped corpus")
    fetch_allow_hosts: list[str] = Field(default_factory=list, description="hosts fetch_url may reach")
    fetch_allow_private: bool = False
    concurrency: int = Field(4, gt=0, description="jobs one replica works on at once")
    reclaim_idle_ms: int = Field(30_000, gt=0, description="a job unacked this long is taken over")
    min_replicas: int = Field(1, ge=1, description="at least 1: replicas report the backlog, so 0 could never scale up")
    max_replicas: int = Field(2, gt=0)
    num_cpus: float = Field(0.25, gt=0)
    jobs_per_replica: float = Field(4.0, gt=0, description="backlog (waiting + pending) one replica should carry")
    max_wait_s: float = Field(2.0, gt=0, description="add a replica while the oldest job has waited longer")
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    look_back_period_s: float = Field(4.0, gt=0)
    metrics_interval_s: float = Field(1.0, gt=0, description="how often replicas push the backlog to Serve")
    # Keep the pool on its own nodes, e.g. {"microturn.io/pool": "background"} (deploy/ labels them).
    label_selector: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> BackgroundConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"background.max_replicas ({self.max_replicas}) is below min_replicas "
                             f"({self.min_replicas})")
        if self.reasoner == "openai" and not (self.openai_base_url and self.openai_model):
            raise ValueError("the openai reasoner needs background.openai_base_url and background.openai_model")
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError("background.look_back_period_s must be longer than metrics_interval_s")
        return self


class AuthConfig(Section):
    """API keys, required on every gRPC entry point (gateway, replicas, EventBus) unless disabled.

    Servers keep only each key's SHA-256. `microturn up` with none configured creates a local key
    in `key_file`; on a cluster with none configured, the gateway and the apps refuse to start.
    """

    api_key_hashes: Annotated[tuple[str, ...], NoDecode] = Field((), description=(
        "SHA-256 of each accepted key, 64 hex digits (`printf %s KEY | sha256sum`); the environment "
        "variable takes them comma-separated"))
    disabled: bool = Field(False, description="accept calls without a key (only on a network you trust)")
    key_file: Path = Field(default_factory=default_key_file, description=(
        "`microturn up`: the local key it creates when no hashes are set (mode 0600); clients read it"))

    @field_validator("key_file")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: "h1,h2" (a JSON list works too)
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _digests(cls, hashes: tuple[str, ...]) -> tuple[str, ...]:
        hashes = tuple(h.split()[0].lower() for h in hashes if h.strip())  # `sha256sum` adds "  -": drop it
        if any("change-me" in h for h in hashes):
            raise ValueError("still the CHANGE-ME placeholder of deploy/base/secrets.yaml: put the SHA-256 of "
                             "each client key there")
        if not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
            raise ValueError("each entry must be a key's SHA-256 as 64 hex digits (`printf %s KEY | sha256sum`), "
                             "never the key itself")
        return hashes


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
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
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
        hidden = item["type"] == "missing" or key.startswith("auth.")  # it may be a key pasted by mistake
        shown = "" if hidden else f" = {item.get('input')!r}"
        lines.append(f"  {key}{shown}: {item['msg']} (set `{key}` in the YAML file or {env})")
    return "\n".join(lines)
