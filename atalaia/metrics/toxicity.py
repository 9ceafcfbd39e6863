"""Toxicity of responses: the probability, 0..1, that a text is toxic, from a named backend.

Two backends, chosen by :func:`build_toxicity_scorer`:

- :class:`DetoxifyScorer` (``ATALAIA_TOXICITY_CHECKPOINT`` + ``ATALAIA_TOXICITY_CONFIG_DIR``): a
  Detoxify transformer checkpoint, loaded from local files only. Detoxify's own download of its
  checkpoints (GitHub releases) is never attempted.
- :class:`ProfanityCheckScorer` (the default): ``alt-profanity-check``, a small scikit-learn model
  shipped inside its PyPI package, so it works offline with no setup. It detects profanity and
  insults, not toxicity in general (threats or identity attacks in polite words score low).

Every score is recorded with the scorer's :attr:`ToxicityScorer.backend`, so values from
different models are never mixed up in dashboards or alert rules.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "ATALAIA_TOXICITY_CHECKPOINT"
CONFIG_DIR_ENV = "ATALAIA_TOXICITY_CONFIG_DIR"

# Detoxify's renaming of the Jigsaw class names (detoxify.detoxify.load_checkpoint).
_DETOXIFY_CLASS_NAMES = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
_ARCH_KEYS = {"model_type", "model_name", "tokenizer_name", "num_classes"}


class ToxicityScorer(abc.ABC):
    """Scores texts with the probability (0..1) that each is toxic.

    Subclasses implement :meth:`_score_batch`; :meth:`score` splits the input into batches of
    :attr:`batch_size` so that memory stays bounded whatever the caller passes.

    Attributes
    ----------
    backend : str
        Name of the model, recorded with every score (e.g. ``"alt-profanity-check"``,
        ``"detoxify:toxic_original-c1212f89.ckpt"``).
    batch_size : int
        Largest number of texts given to the model at once.
    """

    backend: str
    batch_size: int

    def score(self, texts: Sequence[str]) -> list[float]:
        """Probability that each text is toxic, in input order.

        >>> ProfanityCheckScorer().score([])
        []
        """
        if isinstance(texts, str):
            # A bare string is a Sequence[str] of characters: almost surely a caller's mistake.
            raise TypeError("score() takes a sequence of texts, not a single string")
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            scores = self._score_batch(batch)
            if len(scores) != len(batch):
                raise RuntimeError(f"{self.backend} returned {len(scores)} scores for {len(batch)} texts")
            out.extend(scores)
        return out

    @abc.abstractmethod
    def _score_batch(self, texts: list[str]) -> list[float]:
        """Scores of one batch (at most :attr:`batch_size` texts)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r})"


class _LinearCalibrated:
    """alt-profanity-check's model as plain numpy: same probabilities, ~20x less per-call overhead.

    The package's model is a ``CalibratedClassifierCV`` of 5 ``LinearSVC`` folds, each with a
    sigmoid calibrator: ``p = mean_k expit(-(a_k * (x . w_k + b_k) + c_k))``. scikit-learn spends
    about 3 ms per ``predict_proba`` call validating inputs 30 times over, whatever the batch size,
    which caps one-text-per-event scoring near 300 texts/s. Here the 5 folds are one matrix.
    """

    def __init__(self, vectorizer: Any, model: Any) -> None:
        import numpy as np

        folds = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1]:
            raise ValueError(f"classes {model.classes_!r}, expected [0, 1]")
        for fold in folds:
            if fold.method != "sigmoid" or len(fold.calibrators) != 1 or list(fold.estimator.classes_) != [0, 1]:
                raise ValueError("not a binary sigmoid-calibrated linear model")
        self._vectorizer = vectorizer
        self._weights = np.stack([np.asarray(f.estimator.coef_, dtype=np.float64).ravel() for f in folds], axis=1)
        self._intercepts = np.array([float(np.ravel(f.estimator.intercept_)[0]) for f in folds])
        self._a = np.array([float(f.calibrators[0].a_) for f in folds])
        self._b = np.array([float(f.calibrators[0].b_) for f in folds])

    def __call__(self, texts: list[str]) -> list[float]:
        from scipy.special import expit

        decision = self._vectorizer.transform(texts) @ self._weights + self._intercepts
        return [float(p) for p in expit(-(self._a * decision + self._b)).mean(axis=1)]


class ProfanityCheckScorer(ToxicityScorer):
    """The offline default: ``alt-profanity-check`` (linear SVM over TF-IDF, under 1 MB).

    Tens of thousands of texts per second; near 1 for insults and profanity, low for clean text.
    It does not understand context: "you are not an idiot" scores high too.

    Probabilities are those of ``profanity_check.predict_prob``, computed from the same model
    without scikit-learn's per-call overhead (checked against ``predict_prob`` when built; if the
    packaged model ever changes shape, ``predict_prob`` itself is used).

    Examples
    --------
    >>> scorer = ProfanityCheckScorer()
    >>> scorer.backend
    'alt-profanity-check'
    >>> [round(p, 1) for p in scorer.score(["you are a stupid idiot", "thank you for your help"])]
    [1.0, 0.0]
    """

    backend = "alt-profanity-check"

    #: Texts whose scores must agree between the fast path and ``predict_prob``.
    _PROBES = ("you are a stupid idiot", "thank you for your help", "", "shut up", "the bank must hold capital")

    def __init__(self, batch_size: int = 1024) -> None:
        # Imported here: the import loads the pickled model (joblib), which callers that use
        # Detoxify never need. The package pins scikit-learn exactly, so the pickle matches.
        from profanity_check import predict_prob, profanity_check

        self._predict_prob = predict_prob
        self._fast: _LinearCalibrated | None = None
        try:
            fast = _LinearCalibrated(profanity_check.vectorizer, profanity_check.model)
            expected = [float(p) for p in predict_prob(list(self._PROBES))]
            if all(abs(x - y) < 1e-9 for x, y in zip(fast(list(self._PROBES)), expected, strict=True)):
                self._fast = fast
            else:
                logger.warning("alt-profanity-check: fast path disagrees with predict_prob; using predict_prob")
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            logger.warning("alt-profanity-check: model not as expected (%s); using predict_prob", exc)
        self.batch_size = batch_size

    def _score_batch(self, texts: list[str]) -> list[float]:
        if self._fast is not None:
            return self._fast(texts)
        return [float(p) for p in self._predict_prob(texts)]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """No request to the Hugging Face Hub inside the block.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into ``constants.HF_HUB_OFFLINE``: setting
    the environment variable alone does nothing after that, so both are set and then restored.
    """
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    constants: Any = None
    saved_constant = None
    try:
        from huggingface_hub import constants

        saved_constant = constants.HF_HUB_OFFLINE
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        pass
    try:
        for name in names:
            os.environ[name] = "1"
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # transformers 5 draws a "Loading weights" progress bar on stderr, which would break the
    # one-JSON-object-per-line logs of the workers.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _checkpoint_error(checkpoint: Path, problem: str) -> ValueError:
    return ValueError(
        f"{CHECKPOINT_ENV}={checkpoint}: {problem}. Fix: point {CHECKPOINT_ENV} to a Detoxify checkpoint "
        f"(a torch file holding 'config' and 'state_dict'), or unset it to use the offline default scorer."
    )


def _validated_arch(checkpoint: Path, loaded: object) -> tuple[dict[str, Any], list[str], Mapping[str, Any]]:
    """The ``arch.args``, class names and state dict of a loaded checkpoint, or a clear error."""
    if not isinstance(loaded, Mapping) or "config" not in loaded or "state_dict" not in loaded:
        raise _checkpoint_error(checkpoint, "not a Detoxify checkpoint (no 'config' and 'state_dict' keys)")
    try:
        args = dict(loaded["config"]["arch"]["args"])
        classes = list(loaded["config"]["dataset"]["args"]["classes"])
    except (KeyError, TypeError) as exc:
        raise _checkpoint_error(
            checkpoint, f"its config lacks {exc} (needs config.arch.args and config.dataset.args.classes)"
        ) from None
    if set(args) != _ARCH_KEYS:
        raise _checkpoint_error(
            checkpoint, f"config.arch.args has keys {sorted(args)}, Detoxify needs exactly {sorted(_ARCH_KEYS)}"
        )
    if not classes or len(classes) != args["num_classes"]:
        raise _checkpoint_error(checkpoint, f"{len(classes)} class names but num_classes={args['num_classes']}")
    state_dict = loaded["state_dict"]
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise _checkpoint_error(checkpoint, "its state_dict is empty or not a mapping")
    return args, [str(c) for c in classes], state_dict


def _config_num_labels(config_dir: Path) -> int | None:
    try:
        config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if "id2label" in config:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))  # transformers' default


class DetoxifyScorer(ToxicityScorer):
    """A Detoxify checkpoint, loaded from local files only.

    Parameters
    ----------
    checkpoint
        Detoxify ``.ckpt`` file (``ATALAIA_TOXICITY_CHECKPOINT``): a torch pickle with ``config``
        and ``state_dict``. Unpickling runs code: load trusted files only.
    config_dir
        Hugging Face config + tokenizer folder of the checkpoint's base model
        (``ATALAIA_TOXICITY_CONFIG_DIR``), e.g. ``bert-base-uncased`` saved with
        ``save_pretrained``; its ``config.json`` must have as many labels as the checkpoint has
        classes (``"num_labels": 6`` for Detoxify's original model).
    device
        Torch device (``"cpu"``, ``"cuda"``).
    batch_size
        Texts per forward pass.

    Raises
    ------
    FileNotFoundError
        A file or folder is missing; the message names the environment variable.
    ValueError
        The checkpoint or config folder is malformed; the message says what is wrong.

    Notes
    -----
    Loading follows ``detoxify.Detoxify(checkpoint=..., huggingface_config_path=...)`` and builds
    the model with Detoxify's own ``get_model_and_tokenizer``, with two differences:

    - the checkpoint is read once and checked first, so a malformed file gets a clear error;
    - when the checkpoint's ``model_type`` is a Hub model name (``bert-base-uncased`` in
      Detoxify's published checkpoints) rather than a local folder, ``config_dir`` is used in its
      place: Detoxify would fetch that config from the Hub, which offline fails.

    Scores are the sigmoid of the ``toxicity`` class (the first class if there is none), as
    ``Detoxify.predict`` computes them. Texts are truncated to the model's maximum length.
    """

    def __init__(self, checkpoint: Path, config_dir: Path, device: str = "cpu", batch_size: int = 32) -> None:
        checkpoint = Path(checkpoint).expanduser()
        config_dir = Path(config_dir).expanduser()
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"{CHECKPOINT_ENV}={checkpoint}: no such file. Fix: set {CHECKPOINT_ENV} to an existing "
                f"Detoxify .ckpt file, or unset it to use the offline default scorer."
            )
        if not (config_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{CONFIG_DIR_ENV}={config_dir}: no config.json there. Fix: set {CONFIG_DIR_ENV} to the folder "
                f"where the checkpoint's base model config and tokenizer were saved (save_pretrained)."
            )

        import torch
        from detoxify.detoxify import get_model_and_tokenizer

        try:
            # weights_only=False: Detoxify checkpoints pickle their config (plain dicts, but also
            # whatever else the trainer stored). Trusted files only, as the docstring says.
            loaded = torch.load(checkpoint, map_location=device, weights_only=False)
        except Exception as exc:  # unpickling can raise anything; every failure means "unreadable"
            raise _checkpoint_error(checkpoint, f"not a readable torch file ({type(exc).__name__}: {exc})") from exc
        args, classes, state_dict = _validated_arch(checkpoint, loaded)
        del loaded

        num_labels = _config_num_labels(config_dir)
        if num_labels is not None and num_labels != args["num_classes"]:
            raise ValueError(
                f"{CONFIG_DIR_ENV}={config_dir}: config.json has {num_labels} labels but the checkpoint "
                f'{checkpoint.name} has {args["num_classes"]} classes. Fix: set "num_labels": '
                f"{args['num_classes']} (and drop id2label/label2id) in {config_dir / 'config.json'}."
            )
        if not Path(str(args["model_type"])).is_dir():
            logger.info(
                "checkpoint model_type %r is not a local folder; using %s instead",
                args["model_type"],
                config_dir,
                extra={"checkpoint": str(checkpoint)},
            )
            args["model_type"] = str(config_dir)

        try:
            with _hub_offline(), _quiet_transformers():
                model, tokenizer = get_model_and_tokenizer(
                    **args, state_dict=state_dict, huggingface_config_path=str(config_dir)
                )
        except (OSError, RuntimeError, ValueError, AttributeError, KeyError) as exc:
            raise ValueError(
                f"{CHECKPOINT_ENV}={checkpoint} with {CONFIG_DIR_ENV}={config_dir}: the model could not be "
                f"built ({type(exc).__name__}: {exc}). Fix: check that the config folder is the checkpoint's "
                f"base model ({args['model_name']}, {args['tokenizer_name']})."
            ) from exc

        self.class_names = [_DETOXIFY_CLASS_NAMES.get(c, c) for c in classes]
        self._class_index = self.class_names.index("toxicity") if "toxicity" in self.class_names else 0
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer
        self._device = device
        # Tokenizers saved without model_max_length report a huge sentinel; positions beyond the
        # model's embeddings would crash the forward pass, so the model's limit caps it.
        limits = [getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None)]
        sane = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        self._max_length = min(sane) if sane else 512
        self.batch_size = batch_size
        self.backend = f"detoxify:{checkpoint.name}"

    def _score_batch(self, texts: list[str]) -> list[float]:
        import torch

        inputs = self._tokenizer(
            texts, return_tensors="pt", truncation=True, padding=True, max_length=self._max_length
        ).to(self._device)
        with torch.inference_mode():
            logits = self._model(**inputs)[0]
        return torch.sigmoid(logits[:, self._class_index]).float().cpu().tolist()  # type: ignore[no-any-return]


def build_toxicity_scorer(settings: Settings) -> ToxicityScorer:
    """The scorer the settings ask for: Detoxify with a checkpoint, else the offline default.

    Raises
    ------
    ValueError
        ``ATALAIA_TOXICITY_CHECKPOINT`` is set without ``ATALAIA_TOXICITY_CONFIG_DIR``.

    Examples
    --------
    >>> from atalaia.settings import Settings
    >>> build_toxicity_scorer(Settings(home="/tmp/atalaia-doc")).backend
    'alt-profanity-check'
    """
    checkpoint, config_dir = settings.toxicity_checkpoint, settings.toxicity_config_dir
    if checkpoint is not None:
        if config_dir is None:
            raise ValueError(
                f"{CHECKPOINT_ENV} is set but {CONFIG_DIR_ENV} is not. Fix: set {CONFIG_DIR_ENV} to the local "
                f"config/tokenizer folder of the checkpoint's base model (nothing is downloaded), or unset "
                f"{CHECKPOINT_ENV} to use the offline default scorer."
            )
        return DetoxifyScorer(checkpoint, config_dir)
    if config_dir is not None:
        logger.warning(
            "%s is set but %s is not: the config folder is ignored and the offline default scorer is used",
            CONFIG_DIR_ENV,
            CHECKPOINT_ENV,
        )
    return ProfanityCheckScorer()
