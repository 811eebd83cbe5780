from __future__ import annotations

import pytest

from lychee_bench.harness import registry as registry_module
from lychee_bench.harness.catalog import METHODS, TASKS
from lychee_bench.harness.registry import Registry, UnknownNameError


def test_lazy_entries_and_aliases():
    reg = Registry("thing")
    reg.register("path", "pathlib:Path", "a path", aliases=("p",))
    assert reg.resolve("p") == "path"
    import pathlib

    assert reg.get("p") is pathlib.Path
    assert "path" in reg and "nope" not in reg


def test_collision_is_an_error():
    reg = Registry("thing")
    reg.register("a", "os:sep", "x", aliases=("b",))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("b", "os:sep", "y")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        METHODS.resolve("strea")
    assert "streaming" in str(info.value) and "Did you mean" in str(info.value)
    with pytest.raises(UnknownNameError, match="ruler"):
        TASKS.resolve("rulr")


def test_entry_point_plugins_are_loaded(monkeypatch):
    class FakeEntryPoint:
        name = "third_party"
        value = "collections:OrderedDict"

    monkeypatch.setattr(registry_module, "entry_points", lambda group: [FakeEntryPoint()])
    reg = Registry("method", entry_point_group="lychee_bench.methods")
    reg.register("builtin", "os:sep", "x")
    import collections

    assert reg.get("third_party") is collections.OrderedDict
    assert reg.names() == ["builtin", "third_party"]


def test_plugin_name_collision_is_an_error(monkeypatch):
    class FakeEntryPoint:
        name = "builtin"
        value = "collections:OrderedDict"

    monkeypatch.setattr(registry_module, "entry_points", lambda group: [FakeEntryPoint()])
    reg = Registry("method", entry_point_group="lychee_bench.methods")
    reg.register("builtin", "os:sep", "x")
    with pytest.raises(ValueError, match="already taken"):
        reg.names()


def test_every_builtin_method_loads_and_describes_itself():
    for name in METHODS.names():
        cls = METHODS.get(name)
        method = cls()
        described = method.describe()
        assert described["name"] == name and "path" in described


def test_method_descriptions_come_from_the_classes():
    """The catalog repeats no description: `list` prints the one line each class holds."""
    for entry in METHODS.entries():
        assert entry.given_description is None, entry.name
        assert entry.description == METHODS.get(entry.name).description and entry.description


def test_a_plugin_that_cannot_load_still_lists(monkeypatch):
    class BrokenEntryPoint:
        name = "broken"
        value = "no_such_module_here:Method"

    monkeypatch.setattr(registry_module, "entry_points", lambda group: [BrokenEntryPoint()])
    reg = Registry("method", entry_point_group="lychee_bench.methods")
    reg.register("builtin", "collections:OrderedDict", "x")
    described = {entry.name: entry.description for entry in reg.entries()}
    assert described["builtin"] == "x"
    assert "cannot load no_such_module_here:Method" in described["broken"] and "plugin from" in described["broken"]
