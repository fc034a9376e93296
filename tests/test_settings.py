from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_ones() -> None:
    settings = Settings()
    assert settings.offline_model and not settings.redis_configured
    assert settings.host == "127.0.0.1" and settings.binds_loopback
    assert settings.history_ttl_s == 86400 and settings.max_message_bytes == 32768


def test_environment_names_with_and_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-plain")
    monkeypatch.setenv("REDIS_URL", "redis://h:1/0")
    monkeypatch.setenv("AGENTHOST_OPENAI_BASE_URL", "http://llm/v1")
    monkeypatch.setenv("AGENTHOST_SERVICE_API_KEYS", "k1, k2,")
    monkeypatch.setenv("AGENTHOST_HISTORY_TTL_S", "60")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("SSL_CERT_DIR", "/etc/ssl/certs")
    settings = Settings()
    assert settings.openai_org_id == "org-1"
    assert str(settings.ssl_cert_dir) == "/etc/ssl/certs" and settings.ssl_cert_file is None
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-plain"
    assert settings.redis_url is not None and settings.redis_configured
    assert settings.openai_base_url == "http://llm/v1"
    assert [k.get_secret_value() for k in settings.service_api_keys] == ["k1", "k2"]
    assert settings.history_ttl_s == 60
    assert "sk-plain" not in repr(settings)


def test_a_bare_redis_host_and_port_is_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms (Render's fromService hostport) hand out host:port without a scheme."""
    monkeypatch.setenv("REDIS_URL", "redis-abc:6379")
    url = Settings().redis_url
    assert url is not None and url.get_secret_value() == "redis://redis-abc:6379/0"
    monkeypatch.setenv("REDIS_URL", "rediss://user:pw@h:6380/2")
    url = Settings().redis_url
    assert url is not None and url.get_secret_value() == "rediss://user:pw@h:6380/2"


def test_yaml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agenthost.yaml"
    path.write_text("history_max_messages: 7\nturn_timeout_s: 9\n")
    monkeypatch.setenv("AGENTHOST_CONFIG_FILE", str(path))
    monkeypatch.setenv("AGENTHOST_TURN_TIMEOUT_S", "11")
    settings = Settings()
    assert settings.history_max_messages == 7
    assert settings.turn_timeout_s == 11


def test_missing_yaml_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTHOST_CONFIG_FILE", "/nonexistent/agenthost.yaml")
    with pytest.raises(ValueError, match="not a readable file"):
        Settings()


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"history_max_messages": 50, "history_max_stored_messages": 10}, "at least"),
    ({"max_message_bytes": 300000}, "max_body_bytes"),
    ({"log_level": "LOUD"}, "log level"),
    ({"port": 0}, "port"),
])
def test_dangerous_or_wrong_values_are_refused(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**overrides)  # type: ignore[arg-type]


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        env = f"AGENTHOST_{name.upper()}"
        assert f"`{env}`" in readme, f"README lacks {env}"
        default = field.default
        if default is not None and not callable(field.default_factory) and name != "tenants_file":
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            row = next(line for line in readme.splitlines() if line.startswith(f"| `{env}`"))
            assert f"`{shown}`" in row, f"README row for {env} lacks default {shown}"
