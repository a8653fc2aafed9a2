"""A run killed by SIGTERM mid-epoch, or by SIGINT during the end-of-epoch validation, and resumed from its
checkpoint ends with exactly the weights and metrics of an uninterrupted run (dropout and flips make RNG handling
matter; a loader worker makes the sampler hand-over matter); an interrupted validation is run again on resume."""
from __future__ import annotations

import csv
import os
import signal

import lightning as L
import pytest
import torch

from ssckit.config import load_config
from ssckit.engine import trainer as engine
from ssckit.engine.callbacks import AtomicCheckpointIO, TrainingInterrupted

pytestmark = pytest.mark.slow


class KillAt(L.Callback):
    """Sends this process ``signum`` after training step ``step`` or during validation of epoch ``val_epoch``."""

    def __init__(self, step: int | None = None, val_epoch: int | None = None,
                 signum: int = signal.SIGTERM) -> None:
        self.step, self.val_epoch, self.signum, self.sent = step, val_epoch, signum, False

    def _kill(self) -> None:
        if not self.sent:  # once: a second signal means "stop now"
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self._kill()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == self.val_epoch and not trainer.sanity_checking:
            self._kill()


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.fixture
def cfg(tiny_model, tiny_yaml, tiny_data):
    roots = {k: str(v) for k, v in tiny_data.items()}
    # 5 frames, batch 2 -> 3 steps per epoch; lr drops after epoch 1; workers exercise the sampler hand-over
    return load_config(str(tiny_yaml), ["schedule.max_epochs=3", "data.num_workers=1",
                                        "data.persistent_workers=true"], roots=roots)


@pytest.fixture
def reference(cfg, tmp_path):
    _, module = engine.fit(cfg, tmp_path / "reference")
    return _state(module), module.last_scores


def _val_epochs(run) -> list[int]:
    """Epochs of the validations logged by a run's second session (the resumed one)."""
    with open(run / "logs" / "version_1" / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/mIoU")]


KILLS = {"mid-epoch": {"step": 4}, "validation": {"val_epoch": 0, "signum": signal.SIGINT}}


@pytest.mark.parametrize("kill", list(KILLS))
def test_killed_run_resumes_exactly(cfg, reference, tmp_path, kill):
    run = tmp_path / "killed"
    killer = KillAt(**KILLS[kill])
    default_handler = signal.getsignal(killer.signum)
    with pytest.raises(TrainingInterrupted) as e:
        engine.fit(cfg, run, callbacks=[killer])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert e.value.path == ckpt and ckpt.is_file() and e.value.signum == killer.signum
    assert 128 + e.value.signum == {"mid-epoch": 143, "validation": 130}[kill]  # the exit status of ssckit train
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert signal.getsignal(killer.signum) is default_handler  # handlers restored
    if kill == "mid-epoch":
        assert saved["global_step"] == 4 and (run / "checkpoints" / "best.ckpt").is_file()  # epoch 0 validated
    else:  # stopped at the first of 2 validation batches of epoch 0 (3 frames, batch 2): no best checkpoint yet
        assert (saved["epoch"], saved["global_step"]) == (0, 3)
        assert not (run / "checkpoints" / "best.ckpt").exists()

    trainer, module = engine.fit(cfg, run, resume=ckpt)
    assert trainer.global_step == 9 and trainer.current_epoch == 3
    assert _val_epochs(run) == ([1, 2] if kill == "mid-epoch" else [0, 1, 2])  # the interrupted one is redone
    assert (run / "checkpoints" / "best.ckpt").is_file()
    ref_state, ref_scores = reference
    state = _state(module)
    assert state.keys() == ref_state.keys()
    for k in ref_state:
        assert torch.equal(state[k], ref_state[k]), k
    assert module.last_scores["miou"] == ref_scores["miou"]
    assert (module.last_scores["iou"] == ref_scores["iou"]).all()


def test_atomic_checkpoint_io_never_leaves_partial_files(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"a": torch.arange(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.arange(3))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"a": Boom()}, path)
    assert torch.equal(torch.load(path)["a"], torch.arange(3))  # the old checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
