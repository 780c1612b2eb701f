"""The three ways to get codes for a clip, against the authors' own tokenizer, per remainder class.

    .venv/bin/python jobs/compare_conventions.py            # about 5 minutes on 2 CPU cores

Builds boson-ai's `HiggsAudioTokenizer` from the `boson-multimodal` wheel (downloaded by `bash jobs/dev.sh
setup`; see tests/authors_reference.py) with the release's arguments and random, non-degenerate weights,
saves it as the release is (config.json + model.pth) and loads that folder through the project's converter.
For clips in each class of length mod 960 it prints the frame count and the token agreement (over the
frames both have) with the authors' `encode` of:
  (a) the project under codec.convention=authors, each clip alone and all clips in one batch;
  (b) plain transformers `model.encode` on the unpadded clip;
  (c) the model card's way: transformers' DacFeatureExtractor (zero-padding to whole hops) + `model.encode`,
      which is what the project returns under codec.convention=model_card (also compared).
Random weights: the codes are meaningless as tokens, but every part of the model moves them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from codec import AUTHORS, MODEL_CARD, load_codec  # noqa: E402
from tests.authors_reference import authors_codes, random_authors_tokenizer, save_release  # noqa: E402

HOP = 960
CLASSES = [("r = 0", (0,)), ("1 <= r <= 118", (40, 118)), ("119 <= r <= 631", (119, 400, 631)),
           ("632 <= r <= 959", (632, 900))]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    frames = min(a.shape[1], b.shape[1])
    return float(np.mean(a[:, :frames] == b[:, :frames])) if frames else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length before the remainder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    from transformers import DacFeatureExtractor

    authors = random_authors_tokenizer(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_release(authors, os.path.join(tmp, "release"))
        project = {c: load_codec(folder, device="cpu", cache_dir=os.path.join(tmp, "cache"), convention=c)
                   for c in (MODEL_CARD, AUTHORS)}
    model = project[MODEL_CARD].model
    extractor = DacFeatureExtractor(sampling_rate=24000, hop_length=HOP)
    rng = np.random.default_rng(args.seed)
    k = int(args.seconds * 24000) // HOP
    clips = []
    for name, remainders in CLASSES:
        for r in remainders:
            n = k * HOP + r
            clips.append((name, r, (0.15 * rng.standard_normal(n) * (np.abs(np.sin(np.linspace(0, 9, n))) + 0.1))
                          .astype(np.float32)))
    batched = project[AUTHORS].encode([w for _, _, w in clips], 2.0, max_batch_seconds=1000.0, max_clips=64)
    print(f"{len(clips)} clips of {k} hops + r samples at 24 kHz, 2 kbps (8 codebooks); agreement with the "
          "authors' encode over shared frames")
    print(f"{'class':<16} {'r':>4} | frames: authors / (a) / (b) / (c) | (a) alone | (a) batched | (b) plain "
          f"encode | (c) model card | project model_card = (c)")
    totals = {key: [] for key in ("alone", "batched", "plain", "card")}
    for (name, r, wave), in_batch in zip(clips, batched):
        reference = authors_codes(authors, wave, 24000)
        alone = project[AUTHORS].encode([wave], 2.0)[0]
        with torch.inference_mode():
            plain = model.encode(torch.from_numpy(wave)[None, None], bandwidth=2.0, return_dict=False)[0].numpy()
            inputs = extractor(raw_audio=wave, sampling_rate=24000, return_tensors="pt")
            card = model.encode(inputs["input_values"], bandwidth=2.0, return_dict=False)[0].numpy()
        project_card = project[MODEL_CARD].encode([wave], 2.0)[0]
        row = {"alone": agreement(alone, reference), "batched": agreement(in_batch, reference),
               "plain": agreement(plain, reference), "card": agreement(card, reference)}
        for key, value in row.items():
            totals[key].append(value)
        same = "yes" if np.array_equal(project_card, card) else f"NO ({agreement(project_card, card):.1%})"
        print(f"{name:<16} {r:>4} | {reference.shape[1]:>3} / {alone.shape[1]} / {plain.shape[1]} / "
              f"{card.shape[1]:<12} | {row['alone']:>8.1%} | {row['batched']:>10.1%} | {row['plain']:>16.1%} | "
              f"{row['card']:>13.1%} | {same}")
    print("mean over clips: " + ", ".join(f"{key} {np.mean(v):.1%}" for key, v in totals.items()))


if __name__ == "__main__":
    main()
