"""Write docs/results.md from the JSON files that `deeppneumonia ablate`, `compare` and `multilabel` wrote.

Nothing in the tables is typed by hand: re-run the commands quoted in the document, then this script.
Usage: python scripts/make_results_doc.py --ablation runs/ablation-siim-cpu/ablation.json \
           --comparison runs/compare-siim-cpu/comparison.json [--multilabel runs/multilabel-nih-cpu/multilabel.json]
           [--section docs/results_localization.md] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deeppneumonia.studies.ablation import ablation_markdown
from deeppneumonia.studies.comparison import comparison_markdown
from deeppneumonia.studies.multilabel import multilabel_markdown


def _compare_command(s: dict, path: Path, ablations: dict) -> str:
    flags = "" if s.get("deep", "VGG16" in s["results"]) else "--no-deep "
    if "ResNet18" in s["results"] and s["data"] in ablations:
        flags += f"--ablation {ablations[s['data']]} "
    if s.get("previous"):
        flags += f"--previous {s['previous']} "
    return (f"deeppneumonia compare -c {s['preset']} --seeds {' '.join(map(str, s['seeds']))} {flags}"
            f"--out {path.parent} " + " ".join(dict.fromkeys(s["overrides"]))).strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablation", type=Path, action="append", default=[], help="ablation.json (repeatable)")
    ap.add_argument("--comparison", type=Path, action="append", default=[], help="comparison.json (repeatable)")
    ap.add_argument("--multilabel", type=Path, action="append", default=[], help="multilabel.json (repeatable)")
    ap.add_argument("--section", type=Path, action="append", default=[], help="a markdown section to include")
    ap.add_argument("--intro", type=Path, default=Path("docs/results_intro.md"))
    ap.add_argument("--discussion", type=Path, default=Path("docs/results_discussion.md"))
    ap.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = ap.parse_args()
    parts = [args.intro.read_text() if args.intro.is_file() else "# Results\n"]
    for path in args.ablation:
        s = json.loads(path.read_text())
        cmd = s.get("command") or (f"deeppneumonia ablate -c {s['preset']} --seeds {' '.join(map(str, s['seeds']))} "
                                    f"--out {path.parent} " + " ".join(dict.fromkeys(s["overrides"])))
        parts += [f"\n## Table I (ablation, `{s['preset']}`): {s['data']}\n", ablation_markdown(s, cmd.strip())]
    ablations = {json.loads(p.read_text())["data"]: p for p in args.ablation}
    for path in args.comparison:
        s = json.loads(path.read_text())
        cmd = s.get("command") or _compare_command(s, path, ablations)
        if s.get("previous"):  # rows reused from an earlier run: show the command that made them first
            first = Path(s["previous"])
            fs = json.loads(first.read_text())
            cmd = f"{fs.get('command') or _compare_command(fs, first, ablations)}`, then `{cmd}"
        parts += [f"\n## Table II (comparison): {s['data']}\n", comparison_markdown(s, cmd)]
    for path in args.multilabel:
        s = json.loads(path.read_text())
        cmd = s.get("command") or (f"deeppneumonia multilabel -c {s['preset']} --seeds {' '.join(map(str, s['seeds']))} "
                                    f"--out {path.parent} " + " ".join(dict.fromkeys(s["overrides"])))
        parts += [f"\n## Multi-label: CAN against the sigmoid baseline, {s['data']}\n", multilabel_markdown(s, cmd.strip())]
    for path in args.section:  # one heading level down: the section sits under this page's title
        text = path.read_text()
        parts.append("\n" + "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines()) + "\n")
    if args.discussion.is_file():
        parts.append("\n" + args.discussion.read_text())
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
