"""A run killed by SIGTERM (mid-epoch, or during the end-of-epoch validation) and resumed from its checkpoint ends
with exactly the weights and metrics of an uninterrupted run (dropout and flips make RNG handling matter; a
loader worker makes the sampler hand-over matter)."""
from __future__ import annotations

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
    """Sends this process SIGTERM after training step ``step`` or during validation of epoch ``val_epoch``."""

    def __init__(self, step: int | None = None, val_epoch: int | None = None) -> None:
        self.step, self.val_epoch, self.sent = step, val_epoch, False

    def _kill(self) -> None:
        if not self.sent:  # once: a second signal means "stop now"
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

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


@pytest.mark.parametrize("kill", [{"step": 4}, {"val_epoch": 0}], ids=["mid-epoch", "end-of-epoch-validation"])
def test_killed_run_resumes_exactly(cfg, reference, tmp_path, kill):
    run = tmp_path / "killed"
    with pytest.raises(TrainingInterrupted) as e:
        engine.fit(cfg, run, callbacks=[KillAt(**kill)])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert e.value.path == ckpt and ckpt.is_file() and e.value.signum == signal.SIGTERM
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4  # a signal during validation waits for the epoch's checkpoints + 1 step
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    trainer, module = engine.fit(cfg, run, resume=ckpt)
    assert trainer.global_step == 9 and trainer.current_epoch == 3
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
