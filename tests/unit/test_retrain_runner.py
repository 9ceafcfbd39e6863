"""The retraining run's orchestration, with fake machine-learning steps and a SQLite registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from atalaia.events import ModelEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine, upgrade
from retrain import registry, runner
from retrain.lock import DbLock, LockHeld, current_lock
from retrain.runs import get_run, recent_runs


@dataclass
class FakeDataset:
    path: Path
    content_hash: str = "abc123"
    n_train: int = 10


@dataclass
class FakeTrained:
    merged_dir: Path
    losses: list[float] = field(default_factory=lambda: [2.0, 1.5, 1.0])
    loss_curve_path: Path = Path("curve.png")


@dataclass
class FakeQuantized:
    path: Path
    method: str = "int8-weight-only"


class FakeSteps:
    """Deterministic steps: the candidate scores ``candidate_rouge``; the active model 0.2."""

    def __init__(
        self,
        candidate_rouge: float = 0.4,
        new_data: int = 100,
        ppl_ratio: float = 1.01,
        speed_ratios: tuple[float, float] = (1.0, 1.0),
        method: str = "int8-weight-only",
    ) -> None:
        self.candidate_rouge = candidate_rouge
        self.new_data = new_data
        self.ppl_ratio = ppl_ratio
        self.speed_ratios = speed_ratios
        self.method = method
        self.evaluated: list[Path] = []
        self.perplexity_of: list[Path] = []
        self.probed: list[tuple[Path, Path]] = []

    def count_new_data(self, engine: Any, settings: Settings, since: Any) -> int:
        return self.new_data

    def dataset(self, engine: Any, settings: Settings, out_root: Path) -> FakeDataset:
        out_root.mkdir(parents=True, exist_ok=True)
        return FakeDataset(out_root)

    def train(self, base_dir: Path, dataset: Any, out_dir: Path, settings: Settings) -> FakeTrained:
        merged = out_dir / "merged"
        merged.mkdir(parents=True)
        (merged / "model.safetensors").write_bytes(b"x" * 400)
        return FakeTrained(merged)

    def quantize(self, merged_dir: Path, out_dir: Path, settings: Settings) -> FakeQuantized:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.bin").write_bytes(b"q" * 100)
        return FakeQuantized(out_dir, self.method)

    def evaluate(self, model_dir: Path, settings: Settings) -> dict[str, float]:
        self.evaluated.append(model_dir)
        rouge = self.candidate_rouge if model_dir.name.endswith(registry.PARTIAL_SUFFIX) else 0.2
        return {"rouge_l": rouge, "toxicity": 0.01}

    def speed(self, candidate_dir: Path, active_dir: Path, settings: Settings) -> dict[str, Any]:
        self.probed.append((candidate_dir, active_dir))
        prefill, decode = self.speed_ratios
        return {"ratios": {"candidate": {"prefill_ratio": prefill, "decode_ratio": decode}}, "prompt_tokens": 450}

    def reference_perplexity(self, model_dir: Path, settings: Settings) -> float:
        self.perplexity_of.append(model_dir)
        return 10.0 * (self.ppl_ratio if model_dir.name.endswith(registry.PARTIAL_SUFFIX) else 1.0)

    def gate(self, candidate: dict[str, float], active: dict[str, float], settings: Settings) -> tuple[bool, list[str]]:
        if candidate["rouge_l"] >= active["rouge_l"] + 0.02:
            return True, []
        return False, [f"rouge_l {candidate['rouge_l']} did not beat {active['rouge_l']} by 0.02"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Deploy at once (share 0): these tests are about the run's steps and its deploy; the traffic
    # split a run starts by default is tested in test_canary_split.py.
    s = Settings(home=tmp_path / "home", retrain_min_feedback=5, retrain_cooldown_s=0, canary_share=0)
    assert s.models_dir is not None
    base = s.generator_path
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    upgrade(s.database_url)
    return s


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    monkeypatch.setattr(runner, "publish_model_event", lambda settings, event, **_: events.append(event))
    return events


def test_a_better_candidate_is_registered_activated_and_deployed(
    settings: Settings, published: list[ModelEvent]
) -> None:
    outcome = runner.run_retrain(settings, trigger="alert:rouge", steps=FakeSteps())
    assert outcome.status == "deployed", outcome
    engine = get_engine(settings.database_url)
    version = registry.get_version(engine, outcome.candidate_version or "")
    assert version is not None and version["status"] == "active"
    assert version["parent"] == settings.model_version
    assert version["dataset_hash"] == "abc123"
    assert version["quantization"] == "int8-weight-only"
    assert Path(version["artefact_path"]).is_dir()
    assert registry.get_version(engine, settings.model_version)["status"] == "retired"  # type: ignore[index]
    assert [e.type for e in published] == ["deploy"]
    assert published[0].model_version == outcome.candidate_version
    assert published[0].previous_version == settings.model_version
    run = get_run(engine, outcome.run_id)
    assert run is not None and run["status"] == "deployed" and run["trigger"] == "alert:rouge"
    assert [s["name"] for s in run["steps"]] == ["dataset", "train", "quantize", "gate", "register", "deploy"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in run["steps"])
    assert current_lock(engine) is None
    assert not list(settings.models_dir.glob(f"*{registry.PARTIAL_SUFFIX}"))  # type: ignore[union-attr]


def test_the_gate_rejection_registers_nothing_and_says_why(settings: Settings, published: list[ModelEvent]) -> None:
    outcome = runner.run_retrain(settings, trigger="manual", steps=FakeSteps(candidate_rouge=0.205))
    assert outcome.status == "rejected"
    assert "did not beat" in outcome.reason
    engine = get_engine(settings.database_url)
    assert [v["version"] for v in registry.list_versions(engine)] == [settings.model_version]
    assert published == []
    run = get_run(engine, outcome.run_id)
    assert run is not None and run["status"] == "rejected" and "did not beat" in run["error"]
    assert not list(settings.models_dir.glob("*@ft-*"))  # type: ignore[union-attr]


def test_a_quantized_model_that_lost_too_much_perplexity_is_rejected(
    settings: Settings, published: list[ModelEvent]
) -> None:
    outcome = runner.run_retrain(settings, trigger="manual", steps=FakeSteps(ppl_ratio=1.2))
    assert outcome.status == "rejected"
    assert "quantized perplexity" in outcome.reason


@pytest.mark.parametrize(("ratios", "phase"), [((1.5, 0.5), "prefill"), ((0.9, 1.3), "decoding")])
def test_a_candidate_slower_on_the_served_workload_is_rejected(
    settings: Settings, published: list[ModelEvent], ratios: tuple[float, float], phase: str
) -> None:
    # Better quality does not buy a slower model: each phase is judged on its own.
    steps = FakeSteps(candidate_rouge=0.9, speed_ratios=ratios)
    outcome = runner.run_retrain(settings, trigger="manual", steps=steps)
    assert outcome.status == "rejected", outcome
    assert f"candidate {phase} is" in outcome.reason and "than the active version" in outcome.reason
    # Both versions were probed in this run, the candidate's staging folder against the served one.
    assert steps.probed == [(settings.models_dir / f"{outcome.candidate_version}.partial", settings.generator_path)]  # type: ignore[operator]
    assert published == []
    run = get_run(get_engine(settings.database_url), outcome.run_id)
    assert run is not None
    gate = next(s for s in run["steps"] if s["name"] == "gate")
    assert gate["details"]["speed"]["ratios"]["candidate"]["prefill_ratio"] == ratios[0]


def test_a_candidate_within_the_speed_limits_passes(settings: Settings, published: list[ModelEvent]) -> None:
    tuned = settings.model_copy(update={"gate_max_prefill_slowdown": 1.6, "gate_max_decode_slowdown": 1.6})
    outcome = runner.run_retrain(tuned, trigger="manual", steps=FakeSteps(speed_ratios=(1.5, 1.5)))
    assert outcome.status == "deployed", outcome


def test_a_float32_merge_is_registered_as_such_without_a_perplexity_check(
    settings: Settings, published: list[ModelEvent]
) -> None:
    steps = FakeSteps(method="float32", ppl_ratio=2.0)  # the ratio would fail an int8 folder
    outcome = runner.run_retrain(settings, trigger="manual", steps=steps)
    assert outcome.status == "deployed", outcome
    assert steps.perplexity_of == []
    version = registry.get_version(get_engine(settings.database_url), outcome.candidate_version or "")
    assert version is not None and version["quantization"] == "float32"


def test_not_enough_new_data_or_cooldown_skip_the_run(settings: Settings, published: list[ModelEvent]) -> None:
    outcome = runner.run_retrain(settings, trigger="schedule", steps=FakeSteps(new_data=2))
    assert outcome.status == "skipped" and "not enough new data" in outcome.reason
    cooled = settings.model_copy(update={"retrain_cooldown_s": 3600})
    assert runner.run_retrain(cooled, trigger="manual", steps=FakeSteps()).status == "deployed"
    second = runner.run_retrain(cooled, trigger="schedule", steps=FakeSteps())
    assert second.status == "skipped" and "cooldown" in second.reason
    assert runner.run_retrain(cooled, trigger="manual", force=True, steps=FakeSteps(0.9)).status == "deployed"


def test_the_active_version_is_evaluated_once_and_cached(settings: Settings, published: list[ModelEvent]) -> None:
    steps = FakeSteps()
    runner.run_retrain(settings, trigger="manual", steps=steps)
    base_evals = [p for p in steps.evaluated if not p.name.endswith(registry.PARTIAL_SUFFIX)]
    assert len(base_evals) == 1
    # The new active version carries its holdout scores: the next run does not evaluate it again.
    steps2 = FakeSteps(candidate_rouge=0.9)
    assert runner.run_retrain(settings, trigger="manual", steps=steps2).status == "deployed"
    assert all(p.name.endswith(registry.PARTIAL_SUFFIX) for p in steps2.evaluated)


def test_a_step_failure_is_recorded_and_releases_the_lock(settings: Settings, published: list[ModelEvent]) -> None:
    class Broken(FakeSteps):
        def train(self, *args: Any) -> FakeTrained:
            raise RuntimeError("out of memory")

    outcome = runner.run_retrain(settings, trigger="manual", steps=Broken())
    assert outcome.status == "failed" and "out of memory" in outcome.reason
    engine = get_engine(settings.database_url)
    run = get_run(engine, outcome.run_id)
    assert run is not None and run["status"] == "failed"
    assert run["steps"][-1] == {**run["steps"][-1], "name": "train", "status": "failed"}
    assert current_lock(engine) is None


def test_a_live_lock_makes_a_second_run_skip(settings: Settings, published: list[ModelEvent]) -> None:
    engine = get_engine(settings.database_url)
    with DbLock(engine, holder="elsewhere:1", run_id="other"):
        outcome = runner.run_retrain(settings, trigger="manual", steps=FakeSteps())
    assert outcome.status == "skipped" and "in progress" in outcome.reason


def test_a_crashed_runs_lock_row_and_folder_are_recovered(settings: Settings, published: list[ModelEvent]) -> None:
    engine = get_engine(settings.database_url)
    old = utcnow() - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            insert(t.locks).values(
                name="retrain", holder="gone-host:4242", run_id="dead", acquired_at=old, heartbeat_at=old
            )
        )
        conn.execute(
            insert(t.retrain_runs).values(
                run_id="dead", status="running", trigger="manual", started_at=old, steps=[], metrics={}
            )
        )
    assert settings.models_dir is not None
    half = settings.models_dir / f"x@ft-1{registry.PARTIAL_SUFFIX}"
    half.mkdir(parents=True)
    outcome = runner.run_retrain(settings, trigger="manual", steps=FakeSteps())
    assert outcome.status == "deployed"
    assert get_run(engine, "dead")["status"] == "crashed"  # type: ignore[index]
    assert not half.exists()
    run = get_run(engine, outcome.run_id)
    assert run is not None and run["metrics"]["recovered"]["crashed_runs"] == ["dead"]


def test_a_lock_held_by_a_dead_local_process_is_taken_over(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    dead = f"{socket.gethostname()}:{int(child.stdout)}"
    DbLock(engine, holder=dead, run_id="r0", heartbeat_s=3600).acquire()  # never released: the holder "died"
    lock = DbLock(engine, run_id="r1", stale_after_s=3600)
    lock.acquire()
    assert lock.recovered is not None and lock.recovered.holder == dead
    with pytest.raises(LockHeld):
        DbLock(engine, holder="someone:1", stale_after_s=3600).acquire()
    lock.release()
    assert current_lock(engine) is None


def test_retrain_cli_lists_runs_as_json(settings: Settings, published: list[ModelEvent]) -> None:
    runner.run_retrain(settings, trigger="manual", steps=FakeSteps())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATALAIA_")}
    env["ATALAIA_HOME"] = str(settings.home)
    env["ATALAIA_LOG_JSON"] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "composition.cli.main", "retrain", "--json"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    assert runs[0]["status"] == "deployed"
    assert len(recent_runs(get_engine(settings.database_url))) == 1
    with get_engine(settings.database_url).connect() as conn:
        assert conn.execute(select(t.locks)).first() is None
