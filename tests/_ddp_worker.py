"""Worker of tests/test_distributed.py: trains a saved tiny GPM with GPMRewardTrainer and saves its final weights.

Run by ``torchrun --nproc_per_node 2 tests/_ddp_worker.py MODEL_DIR OUT_FILE BATCH STEPS`` (accelerate reads
WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT and starts a gloo process group), or imported by the test for
the single-process reference run (:func:`train`).
"""

from __future__ import annotations

import os
import sys

import torch

QUESTIONS = [f"Question number {i}: is this fine?" for i in range(12)]


def dataset():
    """12 distinct, explicit-prompt pairs (order matters: the test compares per-step data splits)."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": q, "chosen": " yes " * (1 + i % 3), "rejected": " no"} for i, q in enumerate(QUESTIONS)]
    )


def train(model_dir: str, out_dir: str, batch: int, steps: int) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps (lr 0.05, constant, sequential data order) of the GPM saved in ``model_dir``."""
    from gpmkit.trl import GPMRewardConfig, GPMRewardTrainer
    from transformers import AutoTokenizer

    args = GPMRewardConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, optim="sgd", learning_rate=0.05,
        lr_scheduler_type="constant", train_sampling_strategy="sequential", logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True, seed=0, gate=True, value_head_dim=4,
        ddp_find_unused_parameters=False, dataloader_num_workers=0, log_level="error",
    )  # fmt: skip
    trainer = GPMRewardTrainer(
        model=model_dir, args=args, train_dataset=dataset(), processing_class=AutoTokenizer.from_pretrained(model_dir)
    )
    trainer.train()
    assert trainer.state.global_step == steps
    assert trainer.args.world_size == int(os.environ.get("WORLD_SIZE", "1"))
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    model_dir, out_file, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    state = train(model_dir, os.path.dirname(out_file), batch, steps)
    torch.save(state, f"{out_file}.rank{os.environ['RANK']}")
