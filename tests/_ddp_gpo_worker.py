"""Worker of tests/test_gpo.py's DDP smoke: one GPO iteration of a tiny policy under ``torchrun --nproc_per_node 2``.

``python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_gpo_worker.py OUT_DIR`` (accelerate reads the
torchrun environment and starts a gloo process group on CPU). Each rank saves ``OUT_DIR/rank{r}.pt`` with the start
and final weights, its own sampled texts and the reduced metrics history.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))


GROUP_PROMPTS = ["question 1", "question 1", "question 2", "question 2", "question 2", "question 3"]
GROUP_TEXTS = ["yes", "no", "cats", "dogs", "maybe so", "yes no"]


def main(out_dir: str) -> None:
    import test_gpo as t
    from gpmkit._gpo import GPOTrainer

    torch.set_num_threads(1)
    tok = t.chat_tokenizer(t.CORPUS)
    policy, gpm = t._policy(tok), t._gpm(tok)  # same seeds on both ranks: identical replicas
    start = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    args = t._args(num_iterations=1, mode="all", learning_rate=0.05, per_device_train_batch_size=3)
    prompts = [f"question {i}" for i in range(4)]  # 2 per rank
    trainer = GPOTrainer(policy, gpm, args, train_prompts=prompts, eval_prompts=prompts[:2], processing_class=tok)
    assert trainer.accelerator.num_processes == int(os.environ["WORLD_SIZE"])
    texts = trainer.make_samples(*trainer._shard(prompts))["texts"]
    trainer.iteration = 0  # make_samples above only inspects this rank's samples
    history = trainer.train()
    state = {k: v.detach().clone() for k, v in trainer._unwrapped.state_dict().items()}
    # the GRPO reward adapter with a group split across the two ranks (GROUP_PROMPTS/GROUP_TEXTS, 3 + 3)
    from gpmkit._gpo import gpm_reward_func

    rank = trainer.accelerator.process_index
    local = slice(3 * rank, 3 * rank + 3)
    fn = gpm_reward_func(t._gpm(tok), gather_groups=True)
    gathered = fn(prompts=GROUP_PROMPTS[local], completions=GROUP_TEXTS[local])
    torch.save(
        {
            "world_size": trainer.accelerator.num_processes,
            "start": start,
            "state": state,
            "texts": texts,
            "history": history,
            "gathered_rewards": gathered,
        },
        os.path.join(out_dir, f"rank{trainer.accelerator.process_index}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
