"""The shape of a Moshi LM, read from Kyutai's own config dicts.

`LMConfig.from_kyutai(d)` accepts what `moshi.models.loaders.get_moshi_lm(lm_kwargs=d)` accepts
and resolves every key the way `moshi.models.lm.LMModel(**d)` does, including moshi's defaults
for absent keys and the `depformer_*` keys that override the temporal transformer's settings
for the depth transformer. Options this code does not implement (conditioning, LoRA,
quantisation, a second text stream, other norms or gatings...) raise a `ValueError` that names
the key, instead of silently computing something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreground.moshi.presets import MOSHI_7B_LM


class LMConfigError(ValueError):
    """A Moshi LM config asks for something this implementation does not do; names the key."""


# Keys of a Kyutai `config.json` that describe the checkpoint, not the LM (CheckpointInfo pops them).
_CHECKPOINT_KEYS = frozenset({
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
    "lm_gen_config", "tts_config", "stt_config", "model_id",
})

# Keys that change nothing at inference here: why each is safe to ignore.
_INERT_KEYS = {
    "depformer_context": "LMModel replaces the depformer's context with None",
    "depformer_causal": "deprecated; get_moshi_lm drops it",
    "existing_text_end_padding_id": "a training-time label",
    "gradient_checkpointing": "training only",
    "lora_rank": "only read when `lora` is on",
    "lora_scaling": "only read when `lora` is on",
    "extra_heads_dim": "only read when `extra_heads_num_heads` > 0",
}

# Keys with the one value this implementation supports. Absent keys take moshi's default, so a
# dict without "norm" means LMModel's "layer_norm" and is refused like an explicit one.
_ONLY_VALUE: dict[str, tuple[Any, Any]] = {  # key: (supported value, moshi's default)
    "norm": ("rms_norm_f32", "layer_norm"),
    "gating": ("silu", "none"),
    "positional_embedding": ("rope", "sin"),
    "depformer_pos_emb": ("none", "sin"),
    "causal": (True, True),
    "layer_scale": (None, None),
    "kv_repeat": (1, 1),
    "norm_emb": (False, False),
    "depformer_norm": (None, None),
    "depformer_low_rank_embeddings": (None, None),
    "depformer_weights_per_step": (True, False),
    "demux_second_text_stream": (False, False),
    "demux_second_stream": (False, False),
    "quantize": (False, False),
    "lora": (False, False),
    "fuser": (None, None),
    "cross_attention": (False, False),
    "extra_heads_num_heads": (0, 0),
}
# depformer_* keys that override a temporal-transformer key for the depformer (LMModel's kwargs_dep).
_DEPFORMER_OVERRIDES = {"depformer_gating": "gating", "depformer_layer_scale": "layer_scale",
                        "depformer_kv_repeat": "kv_repeat", "depformer_max_period": "max_period"}
_REFUSED_KEYS = {"conditioners": "conditioning (condition_provider / fuser) is not implemented"}
_SHAPE_KEYS = frozenset({
    "dim", "text_card", "existing_text_padding_id", "n_q", "dep_q", "card", "num_heads", "num_layers",
    "hidden_scale", "context", "max_period", "delays", "bias_proj", "depformer_dim",
    "depformer_dim_feedforward", "depformer_num_heads", "depformer_num_layers",
    "depformer_multi_linear", "depformer_weights_per_step_schedule", "text_card_out",
})


@dataclass(frozen=True)
class LMConfig:
    """Everything the inference path needs to know about a Moshi LM's shape.

    Streams, in the order of LMGen's token cache: the text stream, then `dep_q` audio
    codebooks the model generates, then `n_q - dep_q` codebooks of the user's audio.
    """

    dim: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    context: int  # temporal attention window, in frames (each session's KV ring holds this many)
    max_period: float  # rope base of the temporal transformer
    text_card: int
    card: int
    n_q: int
    dep_q: int
    delays: tuple[int, ...]  # one per stream: text, model audio, user audio
    existing_text_padding_id: int
    bias_proj: bool  # biases on the text head and the per-codebook output heads
    depformer_dim: int
    depformer_num_heads: int
    depformer_num_layers: int
    depformer_dim_feedforward: tuple[int, ...]  # one per depformer weight set
    depformer_multi_linear: bool  # one `depformer_in` projection per codebook
    depformer_weights_per_step_schedule: tuple[int, ...] | None  # codebook -> weight set

    @classmethod
    def from_kyutai(cls, d: dict | None) -> LMConfig:
        """Resolve a Kyutai LM config dict (None: the Moshi 7B one) like `LMModel(**d)` would."""
        d = dict(MOSHI_7B_LM if d is None else d)
        for key in d:
            known = (key in _CHECKPOINT_KEYS or key in _INERT_KEYS or key in _ONLY_VALUE
                     or key in _DEPFORMER_OVERRIDES or key in _SHAPE_KEYS)
            if key in _REFUSED_KEYS:
                raise LMConfigError(f"config key {key!r}: {_REFUSED_KEYS[key]}")
            if not known:
                raise LMConfigError(f"config key {key!r} is not a Moshi LM option this implementation knows")
        for key, (supported, default) in _ONLY_VALUE.items():
            _require(key, d.get(key, default), supported)
        for dep_key, main_key in _DEPFORMER_OVERRIDES.items():
            if main_key in _ONLY_VALUE:
                supported, default = _ONLY_VALUE[main_key]
                _require(dep_key, d.get(dep_key, d.get(main_key, default)), supported)
        for key in ("context", "num_layers", "depformer_num_heads", "depformer_num_layers"):
            if d.get(key) is None:  # LMModel has no default for these (or cannot stream without one)
                raise LMConfigError(f"config key {key!r} is required")
        text_card_out = d.get("text_card_out")
        if text_card_out is not None and text_card_out != d.get("text_card", 32000):
            raise LMConfigError("config key 'text_card_out': a text head wider than the text vocabulary "
                                "is not implemented")

        n_q, dep_q = int(d.get("n_q", 8)), int(d.get("dep_q", 8))
        dim, hidden_scale = int(d.get("dim", 128)), float(d.get("hidden_scale", 4))
        depformer_dim = int(d.get("depformer_dim", 256))
        schedule = d.get("depformer_weights_per_step_schedule")
        schedule = None if schedule is None else tuple(int(i) for i in schedule)
        weight_sets = dep_q if schedule is None else max(schedule) + 1
        ff = d.get("depformer_dim_feedforward")
        if ff is None:
            ff = int(hidden_scale * depformer_dim)
        ff = tuple(int(f) for f in ff) if isinstance(ff, (list, tuple)) else (int(ff),) * weight_sets
        cfg = cls(
            dim=dim, num_heads=int(d.get("num_heads", 8)), num_layers=int(d["num_layers"]),
            dim_feedforward=int(hidden_scale * dim), context=int(d["context"]),
            max_period=float(d.get("max_period", 10_000)),
            text_card=int(d.get("text_card", 32000)), card=int(d.get("card", 1024)), n_q=n_q, dep_q=dep_q,
            delays=tuple(int(x) for x in d.get("delays", [0])),
            existing_text_padding_id=int(d.get("existing_text_padding_id", 3)),
            bias_proj=bool(d.get("bias_proj", False)),
            depformer_dim=depformer_dim, depformer_num_heads=int(d["depformer_num_heads"]),
            depformer_num_layers=int(d["depformer_num_layers"]), depformer_dim_feedforward=ff,
            depformer_multi_linear=bool(d.get("depformer_multi_linear", False)),
            depformer_weights_per_step_schedule=schedule,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Consistency checks moshi makes with asserts, as errors that name the key."""
        if len(self.delays) != self.num_streams:
            raise LMConfigError(f"config key 'delays': {len(self.delays)} delays for {self.num_streams} "
                                f"streams (text + n_q={self.n_q})")
        if min(self.delays) < 0:
            raise LMConfigError("config key 'delays': delays must be >= 0")
        if not 0 < self.dep_q <= self.n_q:
            raise LMConfigError(f"config key 'dep_q': {self.dep_q} (a Moshi LM generates 1..n_q codebooks)")
        for key, dim, heads in (("num_heads", self.dim, self.num_heads),
                                ("depformer_num_heads", self.depformer_dim, self.depformer_num_heads)):
            if heads <= 0 or dim % heads or (dim // heads) % 2:
                raise LMConfigError(f"config key {key!r}: {heads} heads do not split dim {dim} "
                                    "into even head sizes")
        if self.depformer_num_layers <= 0:
            raise LMConfigError("config key 'depformer_num_layers' must be > 0")
        schedule = self.depformer_weights_per_step_schedule
        if schedule is not None and (len(schedule) != self.dep_q or min(schedule) < 0):
            raise LMConfigError("config key 'depformer_weights_per_step_schedule': one weight index per "
                                f"generated codebook ({self.dep_q}) expected")
        if len(self.depformer_dim_feedforward) != self.depformer_weight_sets:
            raise LMConfigError(f"config key 'depformer_dim_feedforward': {len(self.depformer_dim_feedforward)} "
                                f"sizes for {self.depformer_weight_sets} weight sets")

    # Streams and delays, as LMGen sees them.
    @property
    def num_streams(self) -> int:
        return self.n_q + 1

    @property
    def user_streams(self) -> int:
        return self.n_q - self.dep_q

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    # Temporal and depth transformers.
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def depformer_head_dim(self) -> int:
        return self.depformer_dim // self.depformer_num_heads

    @property
    def depformer_weight_sets(self) -> int:
        schedule = self.depformer_weights_per_step_schedule
        return self.dep_q if schedule is None else max(schedule) + 1

    def depformer_weight_index(self, codebook: int) -> int:
        """Which per-step weight set (and `depformer_in`, if multi-linear) codebook k uses."""
        schedule = self.depformer_weights_per_step_schedule
        return codebook if schedule is None else schedule[codebook]

    @property
    def depformer_in_count(self) -> int:
        return self.depformer_weight_sets if self.depformer_multi_linear else 1

    def depformer_in_index(self, codebook: int) -> int:
        return self.depformer_weight_index(codebook) if self.depformer_multi_linear else 0


def gating_hidden(dim: int, dim_feedforward: int) -> int:
    """Hidden width of moshi's ActivationGating (2/3 of the FFN width, or 21/8 dim for 4x)."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


def _require(key: str, value: Any, supported: Any) -> None:
    if value != supported:
        raise LMConfigError(f"config key {key!r} = {value!r} is not supported (only {supported!r})")
