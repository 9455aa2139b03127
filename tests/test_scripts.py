"""The helper scripts under scripts/ that the docs quote (run as a user would)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_loss_balance_table_from_a_metrics_log(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"epoch": 1, "train_gn_cls": 2.0, "train_gn_att_pos": 1.0, "train_gn_att_neg": 0.5,
                "val_att2_inside": 0.4, "val_att3_inside": 0.5, "val_att_mask_area": 0.3, "val_study_map": 0.41},
               {"epoch": 2, "train_gn_cls": 1.0, "train_gn_att_pos": 2.0, "train_gn_att_neg": 0.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "loss_balance.py"), str(log)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].split(" | ")[1:4] == ["gn_cls", "gn_att_pos", "gn_att_neg"]  # no feat term was logged
    assert "inside layer2" in out[0] and "inside layer3" in out[0]
    assert out[2].startswith("| 1 | 2.000 | 1.000 | 0.500 | 0.50 | 0.25 | 0.400 | 0.500 | 0.300 | 0.410 |")
    assert out[3].startswith("| 2 | 1.000 | 2.000 | 0.500 | 2.00 | 0.50 | – | – | – | – |")
