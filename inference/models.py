"""The served model and its hot swap: deploy and rollback without failing a request.

A request takes the active (version, generator) pair once, at its start, and keeps it to the
end; a swap loads the new model first (slow, outside any lock) and then replaces the pair in one
assignment. In-flight requests therefore finish on the model they started with, and new ones get
the new model as soon as it is ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SwapError(RuntimeError):
    """A model could not be deployed; the previous one keeps serving."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version."""

    version: str
    generator: Any
    path: str | None = None


class ModelManager:
    """Holds the active model and the one before it (for rollback).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> manager = ModelManager(ServedModel("m@1", "gen-1"), loader=lambda path: "gen-2")
    >>> manager.deploy("m@2", folder).generator
    'gen-2'
    >>> manager.rollback().version
    'm@1'
    """

    def __init__(self, initial: ServedModel, loader: Callable[[str], Any]) -> None:
        self._active = initial
        self._previous: ServedModel | None = None
        self._loader = loader
        self._swap_lock = threading.Lock()  # one load at a time; serving never waits on it
        self.on_change: list[Callable[[ServedModel, ServedModel], None]] = []

    @property
    def active(self) -> ServedModel:
        """The model new requests use."""
        return self._active

    @property
    def previous(self) -> ServedModel | None:
        """The model a rollback returns to."""
        return self._previous

    def _switch(self, new: ServedModel) -> ServedModel:
        old = self._active
        self._previous, self._active = old, new  # one assignment each: readers see old or new
        for callback in self.on_change:
            callback(old, new)
        log.warning("model swapped", extra={"from_version": old.version, "to_version": new.version, "path": new.path})
        return new

    def deploy(self, version: str, path: str | None) -> ServedModel:
        """Load ``path`` and serve it as ``version``; raise :class:`SwapError` and keep the old model on failure."""
        with self._swap_lock:
            if version == self._active.version:
                return self._active
            if self._previous is not None and version == self._previous.version and path in (None, self._previous.path):
                return self._switch(self._previous)
            if not path:
                raise SwapError(f"deploy of {version!r} needs an artefact_path: the version is not loaded here")
            if not Path(path).is_dir():
                raise SwapError(f"artefact_path {path!r} of {version!r} is not a model folder")
            try:
                generator = self._loader(path)
            except Exception as exc:
                raise SwapError(f"cannot load {version!r} from {path}: {type(exc).__name__}: {exc}") from exc
            return self._switch(ServedModel(version, generator, path))

    def rollback(self, version: str | None = None) -> ServedModel:
        """Serve the previous model again (it is still in memory, so this is instant)."""
        with self._swap_lock:
            if self._previous is None:
                raise SwapError("nothing to roll back to: no earlier model was served by this process")
            if version is not None and version not in (self._previous.version, self._active.version):
                raise SwapError(f"cannot roll back to {version!r}: the previous version is {self._previous.version!r}")
            if version == self._active.version:
                return self._active
            return self._switch(self._previous)


def follow_model_events(
    manager: ModelManager,
    settings: Any,
    stop: threading.Event,
    authority: Any = None,
    stats: Any = None,
) -> None:
    """Apply ``deploy``/``rollback`` events from the models topic until ``stop`` is set.

    Every instance reads the topic without a consumer group, from its end: each one must see
    every command, and a restarted instance starts from its configured model. Each event must
    pass the authority checks (:class:`inference.authority.ModelEventAuthority`: registry,
    folder under the models directory, signature when a secret is set); refused and malformed
    events are dead-lettered with the reason. An event that cannot be applied is logged and the
    old model keeps serving.
    """
    from atalaia.events import ModelEvent
    from atalaia.kafka.clients import follow
    from inference.authority import ModelEventAuthority

    authority = authority or ModelEventAuthority(settings)

    def apply(event: ModelEvent, _msg: object) -> None:
        authority.check(event)  # raises Refused: dead-lettered by follow
        try:
            if event.type == "deploy":
                manager.deploy(event.model_version, event.artefact_path)
            else:
                manager.rollback(event.model_version)
        except SwapError as exc:
            log.error("model event not applied", extra={"type": event.type, "error": str(exc)})

    follow(
        settings,
        settings.topic("models"),
        ModelEvent,
        apply,
        stop=stop,
        client_id=f"inference-{settings.inference_port}-models",
        start="latest",
        stats=stats,
    )
