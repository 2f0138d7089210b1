"""From a backbone to a trained, saved, reloaded GPM and a K×K preference matrix (README "Quickstart: training").

    python examples/quickstart.py BACKBONE_DIR [OUT_DIR]
    torchrun --nproc_per_node 2 examples/quickstart.py BACKBONE_DIR [OUT_DIR]

BACKBONE_DIR is any local transformers checkpoint with a chat-template tokenizer (e.g. SmolLM2-135M-Instruct).
"""

import sys

import torch
from datasets import Dataset
from gpmkit import GPMModel
from gpmkit.trl import GPMRewardConfig, GPMRewardTrainer
from transformers import AutoTokenizer

backbone, out = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "gpm-out"
tok = AutoTokenizer.from_pretrained(backbone)


def turn(role, text):
    return [{"role": role, "content": text}]


things = ["fruit", "colour", "city", "tree"]
pairs = [{"prompt": turn("user", f"Name a {t}."), "chosen": turn("assistant", f"Gladly! A {t}: here is one."),
          "rejected": turn("assistant", "No.")} for t in things]  # fmt: skip
model = GPMModel.from_backbone(backbone, value_head_dim=4, gate=True, tokenizer=tok)
args = GPMRewardConfig(output_dir=out, max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
                       save_strategy="no", use_cpu=not torch.cuda.is_available(), seed=0)  # fmt: skip
trainer = GPMRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
trainer.train()
trainer.save_model(out)  # main process only; saves the tokenizer too
trainer.accelerator.wait_for_everyone()
gpm = GPMModel.from_pretrained(out, tokenizer=AutoTokenizer.from_pretrained(out))
matrix = gpm.preference_matrix("Name a fruit.", ["Gladly! A fruit: here is one.", "No.", "Apple."])
if trainer.accelerator.is_main_process:
    print(matrix)
