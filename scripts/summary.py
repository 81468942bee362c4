"""Print the headline metrics of finished stages and where their outputs are.

Usage:
    python scripts/summary.py outputs/pretrain outputs/sft
"""

import json
import sys
from pathlib import Path

HEADLINES = {
    "eval_bits_per_byte": ("eval bits/byte", "{:.3f}"),
    "fact_accuracy": ("fact completion accuracy", "{:.1%}"),
    "fact_baseline": ("majority baseline", "{:.1%}"),
    "before_chat_fact_accuracy": ("chat fact accuracy before", "{:.1%}"),
    "chat_fact_accuracy": ("after", "{:.1%}"),
    "before_chat_identity_accuracy": ("identity accuracy before", "{:.1%}"),
    "chat_identity_accuracy": ("after", "{:.1%}"),
    "eval_loss": ("eval loss", "{:.3f}"),
    "train_runtime_s": ("train time (s)", "{:.0f}"),
}


def main(folders: list[str]) -> None:
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            print(f"{folder}: no metrics.json (stage not run)")
            continue
        metrics = json.loads(path.read_text())
        shown = [f"{label} {fmt.format(metrics[key])}" for key, (label, fmt) in HEADLINES.items() if key in metrics]
        print(f"{folder}: " + ", ".join(shown))
        print(f"    model, metrics.json, loss_curve.png, README.md in {folder}/")


if __name__ == "__main__":
    main(sys.argv[1:])
