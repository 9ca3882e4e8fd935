"""One registry of env ids, with lazy ``"module:attr"`` entry points, mirrored into Gymnasium.

Each :class:`EnvSpec` names the factory of its single env, of its vector env, of its config,
and of each backend. Nothing is imported until an env is made, so ``import twinloop`` stays
light and a vendor SDK loads only when its backend is asked for. Every id is also registered
with Gymnasium, so ``gymnasium.make("twinloop/StemSteer-v0")`` and ``gymnasium.make_vec(...)``
work once ``twinloop`` is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import gymnasium as gym


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One backend an env can run on.

    Attributes:
        name: What users pass as ``backend=`` (``"sim"``, ``"remote"``, ``"nion"`` ...).
        entry_point: ``"module:factory"``; ``factory(config, **options) -> Backend``.
        deterministic: Same seed, same actions -> same trajectory.
        options: Keyword arguments ``make`` routes to the backend (e.g. ``address``).
        extra: The pip extra that provides its dependencies, if any.
        description: One line for ``twinloop list``.
        address_format: How a network backend's ``address`` is written from a host and a
            port (``"tcp://{host}:{port}"``, ``"udp:{host}:{port}"``); empty: no address.
    """

    name: str
    entry_point: str
    deterministic: bool = True
    options: tuple[str, ...] = ()
    extra: str = ""
    description: str = ""
    address_format: str = ""

    def address(self, host: str, port: int) -> str:
        """The address of the device at ``host:port`` in this backend's form.

        Raises:
            ValueError: The backend is not reached over a network.
        """
        if not self.address_format:
            raise ValueError(f"backend {self.name!r} takes no address (it is not a network one)")
        return self.address_format.format(host=host, port=int(port))


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A registered environment id.

    Attributes:
        id: ``"twinloop/<Name>-v<N>"``.
        system: The simulated system (``stem``, ``balloon`` ...).
        entry_point: ``"module:factory"``; ``factory(config, backend=Backend, env_id=str)``
            returns the single ``gymnasium.Env``.
        vector_entry_point: ``"module:factory"``; ``factory(config, n_envs) -> VectorEnv``.
        config_entry_point: ``"module:ConfigClass"``, the frozen config dataclass.
        backends: The backends this env runs on; the first is the default.
        description: One line for ``twinloop list``.
    """

    id: str
    system: str
    entry_point: str
    vector_entry_point: str | None
    config_entry_point: str
    backends: tuple[BackendSpec, ...]
    description: str = ""

    @property
    def backend_names(self) -> tuple[str, ...]:
        """Names of the backends, default first."""
        return tuple(b.name for b in self.backends)

    def backend(self, name: str) -> BackendSpec:
        """The :class:`BackendSpec` called ``name``, or a ``ValueError`` listing valid ones."""
        for b in self.backends:
            if b.name == name:
                return b
        raise ValueError(
            f"{self.id} has no backend {name!r}; valid backends: {', '.join(self.backend_names)}"
        )


def load(entry_point: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = entry_point.partition(":")
    if not attr:
        raise ValueError(f"entry point {entry_point!r} must look like 'module:attr'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{module_name} has no attribute {attr!r}") from None


class Registry(Mapping[str, EnvSpec]):
    """The table of registered env ids (read-only mapping id -> :class:`EnvSpec`)."""

    def __init__(self) -> None:
        """Start empty."""
        self._specs: dict[str, EnvSpec] = {}

    def __getitem__(self, env_id: str) -> EnvSpec:
        """The spec of ``env_id``, or a ``KeyError`` listing the registered ids."""
        try:
            return self._specs[env_id]
        except KeyError:
            raise KeyError(
                f"unknown env id {env_id!r}; registered ids: {', '.join(sorted(self._specs))}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        """Iterate over ids in registration order."""
        return iter(self._specs)

    def __len__(self) -> int:
        """Number of registered ids."""
        return len(self._specs)

    def register(self, spec: EnvSpec) -> None:
        """Add a spec and register the id with Gymnasium."""
        if not spec.backends:
            raise ValueError(f"{spec.id}: at least one backend is required")
        self._specs[spec.id] = spec
        if spec.id in gym.registry:
            del gym.registry[spec.id]
        gym.register(
            id=spec.id,
            entry_point=functools.partial(make, spec.id),
            vector_entry_point=(
                functools.partial(_gym_make_vec, spec.id) if spec.vector_entry_point else None
            ),
            nondeterministic=not spec.backends[0].deterministic,
        )


registry = Registry()


def spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id``; ``ValueError`` listing registered ids if unknown."""
    try:
        return registry[env_id]
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def make_config(env_id: str, config: Any = None, **overrides: Any) -> Any:
    """The config of ``env_id``: the default (or ``config``) with ``overrides`` applied."""
    from twinloop.core.config import override

    s = spec(env_id)
    cls = load(s.config_entry_point)
    base = cls() if config is None else config
    if not isinstance(base, cls):
        raise TypeError(f"{env_id} needs a {cls.__name__}, got {type(base).__name__}")
    return override(base, **overrides) if overrides else base


def _split_options(
    s: EnvSpec, backend: str, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    b = s.backend(backend)
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in b.options}
    return options, kwargs


def make(env_id: str, *, backend: str | None = None, config: Any = None, **kwargs: Any) -> gym.Env:
    """Make a single env.

    Args:
        env_id: A registered id (see ``twinloop.registry``).
        backend: Backend name; defaults to the spec's first (``"sim"``).
        config: A full config object to start from (default: the system's defaults).
        **kwargs: Backend options (e.g. ``address=``) and config overrides
            (e.g. ``beam_current_na=0.2``).

    Raises:
        ValueError: Unknown id, backend or config key (the message lists valid choices).
    """
    s = spec(env_id)
    backend = backend or s.backend_names[0]
    options, overrides = _split_options(s, backend, dict(kwargs))
    cfg = make_config(env_id, config, **overrides)
    backend_obj = make_backend(env_id, backend, cfg, **options)
    factory = load(s.entry_point)
    return factory(cfg, backend=backend_obj, env_id=env_id)


def make_backend(env_id: str, backend: str, config: Any, **options: Any) -> Any:
    """Build backend ``backend`` of ``env_id`` for ``config`` (lazily importing its module).

    Raises:
        ValueError: Unknown backend (the message lists the valid ones).
        ImportError: The backend's optional dependencies are missing (names the pip extra).
    """
    b = spec(env_id).backend(backend)
    try:
        factory = load(b.entry_point)
    except ImportError as exc:
        hint = f"; install it with: pip install 'twinloop[{b.extra}]'" if b.extra else ""
        raise ImportError(f"backend {backend!r} of {env_id} is unavailable: {exc}{hint}") from exc
    return factory(config, **options)


def make_vec(
    env_id: str, n_envs: int, *, backend: str | None = None, config: Any = None, **kwargs: Any
) -> gym.vector.VectorEnv:
    """Make a vector env of ``n_envs`` copies (kernel-batched where the system supports it).

    Args:
        env_id: A registered id.
        n_envs: Batch size.
        backend: Must be a deterministic simulated backend for the kernel-batched env.
        config: A full config object to start from.
        **kwargs: Config overrides.
    """
    s = spec(env_id)
    backend = backend or s.backend_names[0]
    b = s.backend(backend)
    if backend != s.backend_names[0] or s.vector_entry_point is None:
        raise ValueError(
            f"{env_id}: a vector env runs on the simulator kernel only "
            f"(backend {s.backend_names[0]!r}); got backend {b.name!r}. "
            "Use gymnasium.vector.SyncVectorEnv over single envs for devices."
        )
    cfg = make_config(env_id, config, **kwargs)
    factory = load(s.vector_entry_point)
    return factory(cfg, n_envs=n_envs, env_id=env_id)


def _gym_make_vec(env_id: str, num_envs: int = 1, **kwargs: Any) -> gym.vector.VectorEnv:
    return make_vec(env_id, num_envs, **kwargs)
