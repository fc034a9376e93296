import hashlib
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.tenants.registry import TenantRegistry, load_tenants_file, parse_tenants

TOOLS = ["current_time", "calculator"]


def test_bundled_tenants_file_is_valid() -> None:
    tenants = load_tenants_file(Path("config/tenants.yaml"), TOOLS)
    assert "demo" in tenants
    assert set(tenants["demo"].tools) <= set(TOOLS)


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"bad id!": {}}, "must match"),
    ({"t": {"tools": ["rm_rf"]}}, "unknown tools"),
    ({"t": {"temperature": 9}}, "temperature"),
    ({"t": {"api_keys_sha256": ["nothex"]}}, "64 hex"),
    ({"t": {"surprise": 1}}, "surprise"),
    ({"t": {"mcp_servers": [{"name": "x", "url": "ftp://x"}]}}, "url"),
])
def test_bad_configs_are_refused_with_the_reason(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_tenants(raw, TOOLS)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tenants_file(tmp_path / "missing.yaml", TOOLS)
    broken = tmp_path / "broken.yaml"
    broken.write_text("demo: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tenants_file(broken, TOOLS)
    listing = tmp_path / "list.yaml"
    listing.write_text("- demo")
    with pytest.raises(ConfigError, match="must map"):
        load_tenants_file(listing, TOOLS)


def test_registry_finds_key_owners_by_digest() -> None:
    digest = hashlib.sha256(b"k1").hexdigest().upper()
    registry = TenantRegistry(parse_tenants({"a": {"api_keys_sha256": [digest]}, "b": {}}, TOOLS))
    assert registry.any_keys
    assert registry.owner_of_key("k1") == "a"
    assert registry.owner_of_key("k2") is None
    assert registry.ids() == ["a", "b"]


def test_two_tenants_cannot_share_a_key() -> None:
    digest = hashlib.sha256(b"k1").hexdigest()
    with pytest.raises(ConfigError, match="share an API key"):
        TenantRegistry(parse_tenants({"a": {"api_keys_sha256": [digest]},
                                      "b": {"api_keys_sha256": [digest]}}, TOOLS))
