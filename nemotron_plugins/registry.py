"""One generic plugin registry for every kind of nemotron-plugins component.

A :class:`Registry` maps names to targets. A target is either the object itself (registered with the decorator or
:meth:`Registry.register`) or a lazy ``"package.module:attribute"`` string that is imported on first use, so listing
plugins never imports torch or megatron-core.

Third-party packages add plugins through the ``nemotron_plugins`` entry-point group. Each entry point names a
callable that takes no arguments and registers its components, for example in ``pyproject.toml``::

    [project.entry-points.nemotron_plugins]
    my_rewards = "my_package.plugins:register"

and in ``my_package/plugins.py``::

    from nemotron_plugins.registry import REWARDS

    def register() -> None:
        REWARDS.register("my_reward", "my_package.rewards:MyReward")

Registration functions are safe to call twice: registering the same target under the same name again is a no-op,
while a different target under a taken name raises :class:`DuplicatePluginError`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, overload

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENTRY_POINT_GROUP = "nemotron_plugins"
BUILTIN_SOURCE = "nemotron-plugins (builtin)"


class PluginError(RuntimeError):
    """Base class for registry errors."""


class DuplicatePluginError(PluginError):
    """A name is already registered with a different target."""


class UnknownPluginError(PluginError, KeyError):
    """A name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class PluginLoadError(PluginError):
    """A lazy target or an entry point could not be imported."""


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One registered plugin.

    Attributes:
        name: The name users select the plugin by.
        target: The registered object, or its lazy ``"module:attr"`` import string.
        source: Where the registration came from: the builtin set or a distribution's entry point.
    """

    name: str
    target: Any
    source: str

    @property
    def target_path(self) -> str:
        """The ``module:attr`` path of the target, whether or not it is loaded."""
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", type(self.target).__module__)
        qualname = getattr(self.target, "__qualname__", type(self.target).__qualname__)
        return f"{module}:{qualname}"


def import_target(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute.

    Args:
        path: Import string with exactly one colon between module and attribute path.

    Returns:
        The imported object.

    Raises:
        PluginLoadError: If the string is malformed or the import fails.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise PluginLoadError(f"lazy target {path!r} must look like 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginLoadError(f"cannot import module {module_name!r} for target {path!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginLoadError(f"module {module_name!r} has no attribute {attr_path!r} (target {path!r})") from exc
    return obj


_current_source = threading.local()


def _source() -> str:
    return getattr(_current_source, "value", BUILTIN_SOURCE)


@contextlib.contextmanager
def _registering_from(source: str) -> Iterator[None]:
    previous = getattr(_current_source, "value", None)
    _current_source.value = source
    try:
        yield
    finally:
        if previous is None:
            del _current_source.value
        else:
            _current_source.value = previous


class Registry(Generic[T]):
    """A named collection of plugins of one kind.

    Args:
        kind: Short kind name shown to users, e.g. ``"rewards"``.
        description: One line saying what the registered objects are.
    """

    def __init__(self, kind: str, description: str) -> None:
        self.kind = kind
        self.description = description
        self._entries: dict[str, RegistryEntry] = {}
        self._loaded: dict[str, T] = {}
        self._lock = threading.RLock()

    @overload
    def register(self, name: str, target: T | str, *, override: bool = False) -> T | str: ...

    @overload
    def register(
        self, name: str | None = None, target: None = None, *, override: bool = False
    ) -> Callable[[T], T]: ...

    def register(self, name: str | None = None, target: T | str | None = None, *, override: bool = False) -> Any:
        """Register ``target`` under ``name``, or return a decorator that does.

        Args:
            name: Plugin name. With the decorator form it defaults to the decorated object's ``__name__``.
            target: The object, or a lazy ``"module:attr"`` string. Omit to use the decorator form.
            override: Replace an existing registration instead of raising.

        Returns:
            The target (direct form) or a decorator returning the decorated object unchanged.

        Raises:
            DuplicatePluginError: If ``name`` is taken by a different target and ``override`` is false.
        """
        if target is None:

            def decorator(obj: T) -> T:
                self._add(name or getattr(obj, "__name__", None), obj, override)
                return obj

            return decorator
        self._add(name, target, override)
        return target

    def _add(self, name: str | None, target: Any, override: bool) -> None:
        if not name or not isinstance(name, str):
            raise PluginError(f"{self.kind}: a plugin needs a non-empty string name, got {name!r}")
        if isinstance(target, str) and ":" not in target:
            raise PluginError(f"{self.kind}: lazy target {target!r} for {name!r} must look like 'module:attribute'")
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None and not override:
                same = existing.target is target or (
                    isinstance(target, str) and isinstance(existing.target, str) and existing.target == target
                )
                if same:
                    return
                raise DuplicatePluginError(
                    f"{self.kind}: name {name!r} is already registered to {existing.target_path} "
                    f"(from {existing.source}); cannot register {RegistryEntry(name, target, _source()).target_path}. "
                    "Pick another name or pass override=True."
                )
            self._entries[name] = RegistryEntry(name, target, _source())
            self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests)."""
        with self._lock:
            self._entries.pop(name, None)
            self._loaded.pop(name, None)

    def get(self, name: str) -> T:
        """Return the plugin registered as ``name``, importing a lazy target on first use.

        Raises:
            UnknownPluginError: If no plugin has that name; the message lists the valid names.
            PluginLoadError: If a lazy target cannot be imported.
        """
        load_plugins()
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            entry = self._entries.get(name)
        if entry is None:
            raise UnknownPluginError(
                f"no {self.kind} plugin named {name!r}; registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        obj = import_target(entry.target) if isinstance(entry.target, str) else entry.target
        with self._lock:
            self._loaded[name] = obj
        return obj

    def names(self) -> list[str]:
        """Sorted registered names."""
        load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        """Registered entries sorted by name."""
        load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry(kind={self.kind!r}, entries={len(self._entries)})"


LAYER_SPECS: Registry[Any] = Registry("layer_specs", "functions building megatron-core ModuleSpecs for Puzzle blocks")
CHAT_TEMPLATES: Registry[Any] = Registry("chat_templates", "Jinja chat templates (package resource paths)")
BATCH_SAMPLERS: Registry[Any] = Registry("batch_samplers", "batch samplers for training data and RL prompts")
REWARDS: Registry[Any] = Registry("rewards", "reward functions scoring model completions")
RECIPES: Registry[Any] = Registry("recipes", "functions returning a complete training configuration")
ROLLOUT_ENGINES: Registry[Any] = Registry("rollout_engines", "engines generating completions for RL")
ALGORITHMS: Registry[Any] = Registry("algorithms", "RL algorithms (advantage estimators and losses)")

REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r for r in (LAYER_SPECS, CHAT_TEMPLATES, BATCH_SAMPLERS, REWARDS, RECIPES, ROLLOUT_ENGINES, ALGORITHMS)
}

_plugins_loaded = False
_plugins_lock = threading.RLock()


def load_plugins(*, force: bool = False) -> None:
    """Register the builtin plugins, then every ``nemotron_plugins`` entry point. Safe to call many times.

    A third-party entry point that fails to import is reported as a warning naming it and skipped, so one broken
    plugin does not take the others down; a duplicate name still raises.
    """
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded and not force:
            return
        _plugins_loaded = True  # set first: registration code may call registry methods
        from nemotron_plugins.builtin import register_builtin_plugins

        with _registering_from(BUILTIN_SOURCE):
            register_builtin_plugins()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value.startswith("nemotron_plugins.builtin:"):
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            source = f"{dist} (entry point {ep.name!r})"
            try:
                fn = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                logger.warning("skipping nemotron_plugins entry point %r from %s: %s", ep.name, dist, exc)
                continue
            with _registering_from(source):
                fn()
