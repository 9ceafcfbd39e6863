"""The served model and its hot swap: deploy and rollback without failing a request.

A request takes the active (version, generator) pair once, at its start, and keeps it to the
end; a swap loads the new model first (slow, outside any lock) and then replaces the pair in one
assignment. In-flight requests therefore finish on the model they started with, and new ones get
the new model as soon as it is ready.

A canary (:meth:`ModelManager.start_canary`) loads a candidate beside the active model; which
requests it answers is decided in :mod:`inference.routing`. A ``deploy`` of the candidate
promotes it without loading it again, and a ``rollback`` to the active version ends the canary.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)


class SwapError(RuntimeError):
    """A model could not be deployed; the previous one keeps serving."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version."""

    version: str
    generator: Any
    path: str | None = None


@dataclass(frozen=True)
class Canary:
    """A candidate served beside the active model to ``share`` of the requests."""

    candidate: ServedModel
    share: float
    mode: Literal["split", "shadow"] = "split"


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

    A canary serves a candidate beside the active model until it is promoted or ended:

    >>> manager.start_canary("m@3", folder, share=0.2).candidate.generator
    'gen-2'
    >>> manager.deploy("m@3", folder).version, manager.canary is None, manager.previous.version
    ('m@3', True, 'm@1')
    """

    def __init__(self, initial: ServedModel, loader: Callable[[str], Any]) -> None:
        self._active = initial
        self._previous: ServedModel | None = None
        self._canary: Canary | None = None
        self._loader = loader
        self._swap_lock = threading.Lock()  # one load at a time; serving never waits on it
        self.on_change: list[Callable[[ServedModel, ServedModel], None]] = []
        #: Called with the new canary (or None when it ends).
        self.on_canary: list[Callable[[Canary | None], None]] = []

    @property
    def active(self) -> ServedModel:
        """The model new requests use."""
        return self._active

    @property
    def previous(self) -> ServedModel | None:
        """The model a rollback returns to."""
        return self._previous

    @property
    def canary(self) -> Canary | None:
        """The running canary, if any."""
        return self._canary

    def _set_canary(self, canary: Canary | None) -> None:
        old, self._canary = self._canary, canary
        for callback in self.on_canary:
            callback(canary)
        if canary is not None:
            log.warning(
                "canary started",
                extra={
                    "candidate": canary.candidate.version,
                    "active": self._active.version,
                    "share": canary.share,
                    "mode": canary.mode,
                },
            )
        elif old is not None:
            log.warning("canary ended", extra={"candidate": old.candidate.version, "active": self._active.version})

    def _load(self, version: str, path: str | None) -> ServedModel:
        if not path:
            raise SwapError(f"deploy of {version!r} needs an artefact_path: the version is not loaded here")
        if not Path(path).is_dir():
            raise SwapError(f"artefact_path {path!r} of {version!r} is not a model folder")
        try:
            generator = self._loader(path)
        except Exception as exc:
            raise SwapError(f"cannot load {version!r} from {path}: {type(exc).__name__}: {exc}") from exc
        return ServedModel(version, generator, path)

    def start_canary(
        self, version: str, path: str | None, share: float, mode: Literal["split", "shadow"] = "split"
    ) -> Canary:
        """Load ``path`` as ``version`` and serve it beside the active model to ``share`` of requests.

        Raise :class:`SwapError` (the active model keeps serving everything) when the version is
        the active one, the share is outside (0, 1], or the folder does not load.
        """
        if not 0 < share <= 1:
            raise SwapError(f"canary share {share!r} of {version!r} must be in (0, 1]")
        with self._swap_lock:
            if version == self._active.version:
                raise SwapError(f"{version!r} is already the active version; a canary needs another")
            current = self._canary
            if current is not None and current.candidate.version == version and path in (None, current.candidate.path):
                served = current.candidate  # a new share or mode for the same candidate: no reload
            elif (
                self._previous is not None and version == self._previous.version and path in (None, self._previous.path)
            ):
                served = self._previous
            else:
                served = self._load(version, path)
            canary = Canary(served, share, mode)
            self._set_canary(canary)
            return canary

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
            canary = self._canary
            if version == self._active.version:
                return self._active
            if canary is not None and version == canary.candidate.version and path in (None, canary.candidate.path):
                # Promotion: the candidate is loaded already. Switch first, so that no request
                # routed in between falls back to a model that is no longer the parent.
                served = self._switch(canary.candidate)
                self._set_canary(None)
                return served
            if self._previous is not None and version == self._previous.version and path in (None, self._previous.path):
                served = self._switch(self._previous)
            else:
                served = self._switch(self._load(version, path))
            if canary is not None:  # another version was deployed: the canary is over
                self._set_canary(None)
            return served

    def rollback(self, version: str | None = None) -> ServedModel:
        """Serve the previous model again (it is still in memory, so this is instant).

        During a canary, a rollback to the active version (or with no version) ends the canary
        and keeps the active model.
        """
        with self._swap_lock:
            if self._canary is not None and version in (None, self._active.version):
                self._set_canary(None)
                return self._active
            if self._previous is None:
                raise SwapError("nothing to roll back to: no earlier model was served by this process")
            if version is not None and version not in (self._previous.version, self._active.version):
                raise SwapError(f"cannot roll back to {version!r}: the previous version is {self._previous.version!r}")
            if version == self._active.version:
                return self._active
            if self._canary is not None:
                self._set_canary(None)
            return self._switch(self._previous)


def follow_model_events(
    manager: ModelManager,
    settings: Any,
    stop: threading.Event,
    authority: Any = None,
    stats: Any = None,
) -> None:
    """Apply ``deploy``/``rollback``/``canary`` events from the models topic until ``stop`` is set.

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
            elif event.type == "canary":
                share = event.canary_share if event.canary_share is not None else settings.canary_share
                manager.start_canary(
                    event.model_version, event.artefact_path, share, event.canary_mode or settings.canary_mode
                )
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
