"""Training engine: one LightningModule (``lit_module``), one LightningDataModule (``datamodule``), run-safety
callbacks (``callbacks``) and the Trainer / run orchestration (``trainer``). Importing it imports Lightning."""
