"""Summarise `medcbir finetune --json` cards of several seeds: held-out mAP@10 before/after, mean +- std.

Usage: python scripts/eval_finetune_seeds.py artifacts/ft/brain-seed*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(paths: list[str]) -> None:
    cards = [json.loads(Path(p).read_text()) for p in sorted(paths)]
    if not cards:
        raise SystemExit("give the card JSON files of the seeds")
    before = np.array([c["test_map@10_before"] for c in cards])
    after = np.array([c["test_map@10_after"] for c in cards])
    gain = after - before
    print(f"dataset: {cards[0]['dataset']}  split: {cards[0]['split']}")
    print(
        "| seed | test queries | database | best epoch | mAP@10 ImageNet | mAP@10 fine-tuned | gain | minutes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for card, b, a in zip(cards, before, after, strict=True):
        seed = card["hyperparameters"]["seed"]
        print(
            f"| {seed} | {card['test_images']} | {card['train_images']} | {card['best_epoch']} | "
            f"{b:.4f} | {a:.4f} | {a - b:+.4f} | {card['elapsed_s'] / 60:.1f} |"
        )
    std = {"ddof": 1} if len(cards) > 1 else {}
    print(
        f"| mean ± std ({len(cards)} seeds) | | | | {before.mean():.4f} ± {before.std(**std):.4f} | "
        f"{after.mean():.4f} ± {after.std(**std):.4f} | {gain.mean():+.4f} ± {gain.std(**std):.4f} | |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
