"""Train Higgs Audio V2 on an output's stored codes: an example to copy.

    python jobs/train_higgs.py outputs/demo --steps 5                       # one process, CPU
    torchrun --nproc_per_node 2 jobs/train_higgs.py outputs/demo --steps 5  # DDP, one rank per process

TokenDataset reads the output (as many batches on every rank, shuffled, long clips cropped);
HiggsBatcher groups rows of similar length into batches within `--max-tokens` text + audio positions
(B x the longest row's) and HiggsAudioV2Collator turns them, in the DataLoader's workers, into the tensors
`HiggsAudioV2Processor` would build from raw audio. No audio is encoded. Offline by default: a word-level
text tokenizer and a tiny random model from code (`demo.higgs_tiny`); give `--tokenizer` (and load your
checkpoint in place of `model_config`) for the real thing. A checkpoint holds the dataset's `state_dict()`,
so a restart goes on mid-epoch without reading a row twice.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # demo/ is not installed

from demo.higgs_tiny import model_config, text_tokenizer  # noqa: E402
from pipeline.reading.dataset import TokenDataset  # noqa: E402
from pipeline.reading.higgs import HiggsAudioV2Collator, HiggsBatcher  # noqa: E402


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="+", help="output folders or URLs")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=4096, help="text + audio positions per batch")
    parser.add_argument("--crop-frames", type=int, default=750, help="longest audio per row, frames (25 per second)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank (they collate)")
    parser.add_argument("--tokenizer", help="the checkpoint's text tokenizer (default: an offline word-level one)")
    parser.add_argument("--checkpoint", help="save model, optimizer and dataset state here; resume from it if it exists "
                        "(one process resumes with --workers 1: its batch counts per worker are not planned)")
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")

    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = text_tokenizer([" ".join(chr(c) for c in range(97, 123))])  # letters; other words are <|unk|>
    collator = HiggsAudioV2Collator(tokenizer, template="{text}{audio}", text_column="text")
    data = TokenDataset(args.output, shuffle_buffer=1000, crop_frames=args.crop_frames,
                        batcher=HiggsBatcher(collator, max_tokens=args.max_tokens))  # rank, world from torch.distributed
    loader = DataLoader(data, batch_size=None, num_workers=args.workers)

    from transformers import HiggsAudioV2ForConditionalGeneration
    torch.manual_seed(0)
    model = HiggsAudioV2ForConditionalGeneration(model_config(tokenizer)).to(device)
    if distributed:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        saved = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(saved["model"]); optimizer.load_state_dict(saved["optimizer"])
        data.load_state_dict(saved["data"][data.rank]); step = saved["step"]

    losses: list[float] = []
    while step < args.steps:
        for batch in data.track(loader):  # the same number of batches on every rank
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}  # text loss: use_text_head=True
            loss = model(**batch).loss
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            losses.append(loss.item()); step += 1
            if args.checkpoint:
                states = [None] * data.world_size
                if distributed:
                    dist.all_gather_object(states, data.state_dict())
                else:
                    states = [data.state_dict()]
                if not distributed or dist.get_rank() == 0:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "data": states,
                                "step": step}, args.checkpoint)
            if step == args.steps:
                break
        else:
            data.set_epoch(data.epoch + 1)
    if distributed:
        dist.destroy_process_group()
    print(f"{step} steps, losses {' '.join(f'{x:.3f}' for x in losses)}")
    return losses


if __name__ == "__main__":
    main()
