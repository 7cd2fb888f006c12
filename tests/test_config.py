"""Config: laptop defaults, YAML, MICROTURN_* overrides, and errors that name the key."""

import pytest

from cluster.config import ConfigError, load_config


def test_defaults_fit_a_laptop(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = load_config()
    assert config.redis.url is None and config.ray.address is None
    assert config.foreground.tick_ms == 200
    assert config.foreground.turn_policy == "auto"


def test_yaml_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "microturn.yaml"
    path.write_text("foreground:\n  max_sessions: 8\n  turn_policy: vad\nredis:\n  url: redis://file:1\n")
    monkeypatch.setenv("MICROTURN_REDIS_URL", "redis://env:2")
    monkeypatch.setenv("MICROTURN_LOG_LEVEL", "DEBUG")
    config = load_config(path)
    assert config.foreground.max_sessions == 8
    assert config.foreground.turn_policy == "vad"
    assert config.redis.url == "redis://env:2"  # the environment wins over the file
    assert config.log_level == "DEBUG"


def test_turn_settings_reach_the_replica(monkeypatch):
    from cluster.app import replica_settings

    assert load_config().foreground.backchannel_max_ms == 600 and load_config().foreground.weave_max_wait_ms == 1000
    monkeypatch.setenv("MICROTURN_FOREGROUND_BACKCHANNEL_MAX_MS", "0")
    monkeypatch.setenv("MICROTURN_FOREGROUND_WEAVE_MAX_WAIT_MS", "400")
    settings = replica_settings(load_config(), redis_url=None)
    assert (settings.backchannel_max_ms, settings.weave_max_wait_ms) == (0, 400)


def test_ray_address_comes_from_the_ray_variable(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert load_config().ray.address == "10.0.0.1:6379"


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("MICROTURN_FOREGROUND_MAX_SESSIONS", "-1", "foreground.max_sessions"),
        ("MICROTURN_FOREGROUND_TURN_POLICY", "sometimes", "foreground.turn_policy"),
        ("MICROTURN_FOREGROUND_BACKCHANNEL_MAX_MS", "-1", "foreground.backchannel_max_ms"),
        ("MICROTURN_SERVE_GRPC_PORT", "99999", "serve.grpc_port"),
    ],
)
def test_invalid_values_name_the_key_and_the_variable(monkeypatch, env, value, key):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_config()
    assert key in str(err.value) and env in str(err.value)


def test_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("foreground:\n  max_sesions: 8\n")
    with pytest.raises(ConfigError, match="foreground.max_sesions"):
        load_config(path)


def test_a_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
