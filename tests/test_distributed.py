"""2-process gloo DDP on CPU: GPMRewardTrainer under torchrun equals a 1-process run with the doubled batch.

Both runs start from the same saved tiny gated GPM, see the same data in the same order (sequential sampler: at
step t, rank 0 gets pairs [4t, 4t+2) and rank 1 [4t+2, 4t+4), the reference the 4 pairs [4t, 4t+4)), use SGD at a
constant learning rate and no dropout. DDP averages the two ranks' mean-loss gradients, which is the gradient of
the 4-pair mean loss, so after N steps the weights agree up to float32 rounding: the two runs differ only in the
order of floating-point reductions (per-rank padding widths, the all-reduce sum, the batch-mean), about 1e-7
relative per step on O(1) values, multiplied by lr = 0.05 over 3 steps (observed: max |Δ| = 3e-8, with gradient
clipping at 1.0 active). ``atol = 1e-5`` leaves a wide margin over that, while a run that skips the gradient
all-reduce (one rank's 2 pairs per step) ends about 1e-3 away (checked: > 10·atol).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

import _ddp_worker

STEPS, BATCH, ATOL = 3, 2, 1e-5
WORKER = os.path.join(os.path.dirname(__file__), "_ddp_worker.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_model_and_tokenizer(path) -> None:
    from gpmkit.models import GPMModel
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [*_ddp_worker.QUESTIONS, "yes no"] * 10,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    torch.manual_seed(0)
    backbone = LlamaModel(
        LlamaConfig(
            vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        )
    )  # fmt: skip
    GPMModel.from_backbone(backbone, value_head_dim=4, gate=True, tokenizer=tokenizer).save_pretrained(path)


def test_two_process_gloo_ddp_matches_single_process_double_batch(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "ddp"
    _save_model_and_tokenizer(model_dir)
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        WORKER, str(model_dir), str(out / "state.pt"), str(BATCH), str(STEPS),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(out / "state.pt.rank0")
    rank1 = torch.load(out / "state.pt.rank1")

    reference = _ddp_worker.train(str(model_dir), str(tmp_path / "ref"), 2 * BATCH, STEPS)
    no_sync = _ddp_worker.train(str(model_dir), str(tmp_path / "half"), BATCH, STEPS)
    assert rank0.keys() == reference.keys() and "prompt_head.weight" in reference
    moved = 0.0
    for key, ref in reference.items():
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the replicas bitwise identical
        torch.testing.assert_close(rank0[key], ref, rtol=0, atol=ATOL, msg=key)
        moved = max(moved, (rank0[key] - no_sync[key]).abs().max().item())
    assert moved > 10 * ATOL  # the gradients were really synchronised: one rank's data alone ends elsewhere
