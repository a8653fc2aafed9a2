"""One LightningDataModule for every dataset reader and model pipeline.

Sampling is deterministic and resumable: :class:`EpochSampler` orders frames by (seed, epoch), shards them over
processes itself (so Lightning's ``use_distributed_sampler`` must be off), gives every training frame an
augmentation key (seed, epoch, index) independent of workers and process count, and skips the batches already
trained when a run resumes mid-epoch (the position is saved in checkpoints through ``state_dict``).
Evaluation shards are not padded, so every frame is scored exactly once whatever the number of processes.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssckit.config import DataConfig
from ssckit.data.datasets import SSCDataset, get_dataset_class
from ssckit.data.pipelines import get_pipeline
from ssckit.errors import SsckitError

class SampleError(SsckitError):
    """A data problem inside a loader worker, re-raised in the main process as one line."""

    def __init__(self, message: str) -> None:
        # torch re-creates worker exceptions as ExcType("Caught ... Original Traceback ... \nModule.SampleError: msg")
        if "Original Traceback" in message and "SampleError: " in message:
            message = message.rsplit("SampleError: ", 1)[1].strip()
        super().__init__(message)


class FrameDataset(Dataset):
    """A reader's frames through a pipeline; items are ``index`` or ``(index, seed, epoch)`` from EpochSampler."""

    def __init__(self, reader: SSCDataset, pipeline: Any) -> None:
        self.reader = reader
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.reader.frames)

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        index, aug = (key[0], (key[1], key[2], key[0])) if isinstance(key, tuple) else (key, None)
        frame = self.reader.frames[index]
        try:
            return self.pipeline(frame, aug)
        except SsckitError as e:
            raise SampleError(f"frame {frame.sequence}/{frame.frame}: {e}") from None


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples: arrays -> tensors (B, ...), numbers/bools -> (B,) tensors, strings -> lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, str):
            batch[key] = list(values)
        elif isinstance(first, (np.ndarray, torch.Tensor)):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                frames = ", ".join(f"{s['sequence']}/{s['frame_id']}" for s in samples if "sequence" in s)
                raise SsckitError(f"cannot batch '{key}' of frames {frames}: shapes differ {sorted(shapes)}")
            batch[key] = torch.stack([torch.as_tensor(v) for v in values])
        else:
            batch[key] = torch.as_tensor(values)
    return batch


class EpochSampler(Sampler):
    """Order = permutation(seed, epoch) (or identity); shard ``rank::world_size``; optional mid-epoch skip.

    Training (``pad=True``) repeats the first frames so every process gets ``ceil(N / world)`` items (DDP needs
    equal step counts); evaluation (``pad=False``) gives each frame to exactly one process.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True,
                 with_aug_key: bool = False) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad, self.with_aug_key = rank, world_size, pad, with_aug_key
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._skip = 0

    def resume(self, epoch: int, skip: int) -> None:
        """The next iteration is epoch ``epoch`` without its first ``skip`` items (of this process)."""
        self.epoch, self._skip = epoch, skip

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order += (order * math.ceil(total / self.size))[: total - self.size]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        for i in self._order()[skip:]:
            yield (i, self.seed, self.epoch) if self.with_aug_key else i


class SSCDataModule(L.LightningDataModule):
    """Readers + pipelines + loaders for ``train`` / ``val`` / ``predict``; ``eval_split`` / ``eval_sequences``
    replace the validation selection (ssckit eval / predict)."""

    def __init__(self, cfg: DataConfig, pipeline: str, seed: int = 0, eval_split: str | None = None,
                 eval_sequences: Sequence[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.pipeline_name = pipeline
        self.seed = seed
        self.eval_split = eval_split
        self.eval_sequences = list(eval_sequences) if eval_sequences else None
        self.readers: dict[str, SSCDataset] = {}
        self._train_sampler: EpochSampler | None = None
        self._resume: dict[str, int] | None = None

    # --- readers -------------------------------------------------------------------------------------------------

    def selection(self, stage: str) -> tuple[str | None, list[str] | None]:
        if stage == "train":
            return self.cfg.train_split if self.cfg.train_sequences is None else None, self.cfg.train_sequences
        if self.eval_split is not None or self.eval_sequences is not None:
            return self.eval_split, self.eval_sequences
        return self.cfg.val_split if self.cfg.val_sequences is None else None, self.cfg.val_sequences

    def reader(self, stage: str) -> SSCDataset:
        """The dataset reader of ``stage`` (built once; raises a one-line error for a missing root or layout)."""
        key = "train" if stage == "train" else "eval"
        if key not in self.readers:
            if not self.cfg.data_root:
                raise SsckitError("no data root: pass --data-root DIR or set SSCKIT_DATA_ROOT")
            split, sequences = self.selection(stage)
            if split is None and not sequences:
                raise SsckitError(f"no {'training' if key == 'train' else 'evaluation'} frames selected: set "
                                  f"data.{'train' if key == 'train' else 'val'}_split or _sequences")
            cls = get_dataset_class(self.cfg.dataset)
            reader = cls(self.cfg.data_root, split=split, sequences=sequences, label_root=self.cfg.label_root,
                         depth_root=self.cfg.depth_root, v10_z_shift=self.cfg.v10_z_shift)
            if not reader.frames:
                raise SsckitError(f"{reader}: no frames")
            self.readers[key] = reader
        return self.readers[key]

    def dataset(self, stage: str) -> FrameDataset:
        reader = self.reader(stage)
        pipeline_cls = get_pipeline(self.pipeline_name)
        return FrameDataset(reader, pipeline_cls(reader, self.cfg, stage))

    # --- loaders -------------------------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, stage: str, sampler: EpochSampler, batch_size: int) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(self.dataset(stage), batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_samples, pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.cfg.persistent_workers and workers > 0,
                          generator=torch.Generator().manual_seed(self.seed), drop_last=False)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        size = len(self.reader("train").frames)
        sampler = EpochSampler(size, shuffle=True, seed=self.seed, rank=rank, world_size=world, pad=True,
                               with_aug_key=True)
        if self._resume is not None:
            sampler.resume(self._resume["epoch"], self._resume["batches"] * self.cfg.batch_size)
            self._resume = None
        self._train_sampler = sampler
        return self._loader("train", sampler, self.cfg.batch_size)

    def _eval_loader(self, stage: str) -> DataLoader:
        rank, world = self._rank_world()
        size = len(self.reader(stage).frames)
        if size < world:  # a process without frames would skip the loop and its collectives: the others would hang
            raise SsckitError(f"{size} {'evaluation' if stage == 'val' else stage} frame(s) for {world} processes: "
                              "each process needs at least one (use fewer trainer.devices)")
        sampler = EpochSampler(size, shuffle=False, seed=self.seed, rank=rank, world_size=world, pad=False)
        return self._loader(stage, sampler, self.cfg.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    # --- resume position -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the training loader stands: the epoch to run next and the batches of it already trained."""
        sampler, trainer = self._train_sampler, self.trainer
        if sampler is None or trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        total = trainer.num_training_batches
        if done >= total:
            return {"epoch": sampler.epoch + 1, "batches": 0}
        return {"epoch": sampler.epoch, "batches": int(done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])} if state else None
