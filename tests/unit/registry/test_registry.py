from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nemotron_plugins.registry import (
    REGISTRIES,
    DuplicatePluginError,
    PluginError,
    PluginLoadError,
    Registry,
    UnknownPluginError,
    import_target,
    load_plugins,
)


def test_decorator_and_direct_registration():
    reg: Registry[object] = Registry("things", "test things")

    @reg.register()
    def alpha():
        return "a"

    reg.register("beta", "json:dumps")
    assert reg.get("alpha") is alpha
    assert reg.get("beta") is json.dumps
    assert "beta" in reg and "gamma" not in reg
    assert [e.name for e in reg.entries()] == ["alpha", "beta"]
    assert reg.entries()[1].target_path == "json:dumps"


def test_same_target_twice_is_a_noop_and_different_target_raises():
    reg: Registry[object] = Registry("things", "test things")
    reg.register("x", "json:dumps")
    reg.register("x", "json:dumps")
    with pytest.raises(DuplicatePluginError, match="'x' is already registered to json:dumps"):
        reg.register("x", "json:loads")
    reg.register("x", "json:loads", override=True)
    assert reg.get("x") is json.loads


def test_unknown_name_lists_valid_names():
    reg: Registry[object] = Registry("things", "test things")
    reg.register("one", "json:dumps")
    with pytest.raises(UnknownPluginError, match="no things plugin named 'two'; registered: one"):
        reg.get("two")


def test_bad_lazy_targets():
    reg: Registry[object] = Registry("things", "test things")
    with pytest.raises(PluginError, match="module:attribute"):
        reg.register("bad", "json.dumps")
    reg.register("missing", "json:no_such_function")
    with pytest.raises(PluginLoadError, match="no attribute 'no_such_function'"):
        reg.get("missing")
    with pytest.raises(PluginLoadError, match="cannot import module"):
        import_target("no_such_module_xyz:thing")


def test_required_kinds_exist():
    for kind in ("layer_specs", "chat_templates", "batch_samplers", "rewards", "recipes"):
        assert kind in REGISTRIES


def test_load_plugins_is_idempotent():
    load_plugins()
    before = {k: r.names() for k, r in REGISTRIES.items()}
    load_plugins(force=True)
    assert {k: r.names() for k, r in REGISTRIES.items()} == before


def test_cli_plugins_list_json():
    out = subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "plugins", "list", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(out.stdout)
    assert set(data) == set(REGISTRIES)
