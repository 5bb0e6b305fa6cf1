"""The docs checker (:mod:`tests.doc_check`) on synthetic pages, and the figures blocks against
the committed metrics (:mod:`tests.doc_figures`): each kind of drift is caught."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.doc_check import (
    ROOT,
    check_markdown,
    check_tables,
    normalise,
    shell_lines,
    split_commands,
)

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------ tests: the checker
BAD_DOC = """# Synthetic

```bash
fetal score-ctg recs/ --out preds.csv --no-such-flag   # a flag the command lacks
python -m bench.ctg --skip-stages --project stages/no_such_dir
fetal no-such-command --out x.csv
make pipeline && make no-such-target
dvc exp run -S train_ctg.no_such_key=1
dvc repro no_such_stage
python -m stages.no_such_module
make serve-forever   # docs-test: skip
```

A [good link](results.md), a [bad one](no-such-page.md) and a [bad anchor](results.md#nowhere).
"""

GOOD_DOC = """```sh
FETAL_MIRROR=../shared/data .venv/bin/fetal score-us imgs --out p.csv \\
    --pixel-size-csv sizes.csv   # a continued line
python -m bench.ultrasound --set segment_us.method=classical --n 4 | tail -n 3
dvc repro evaluate_us && make test
cat data/reports/evaluate_us.json
```
"""


def test_checker_flags_each_kind_of_drift() -> None:
    problems = "\n".join(check_markdown(BAD_DOC, ROOT / "docs" / "synthetic.md"))
    expected = [
        "synthetic.md:4: fetal score-ctg: flag --no-such-flag not in its --help",
        "synthetic.md:5: path stages/no_such_dir does not exist",
        "synthetic.md:6: fetal no-such-command: no such sub-command",
        "synthetic.md:7: make no-such-target: no such Makefile target",
        "synthetic.md:8: -S train_ctg.no_such_key: no such params.yaml key",
        "synthetic.md:9: dvc repro no_such_stage: no such stage",
        "synthetic.md:10: python -m stages.no_such_module: no such module",
        "link no-such-page.md: docs/no-such-page.md does not exist",
        "link results.md#nowhere: no heading #nowhere in docs/results.md",
    ]
    for message in expected:
        assert message in problems
    assert "--out" not in problems and "--skip-stages" not in problems
    assert "make pipeline" not in problems and "serve-forever" not in problems
    assert "good link" not in problems and "link results.md:" not in problems
    assert len(problems.splitlines()) == len(expected)


TABLES_DOC = """Intro.

| what | figure |
|---|---:|
| unsourced | 0.731 |

<!-- table: bench `python -m bench.ctg --skip-stages`, 2026-11-25 -->
| step | wall s |
|---|---:|
| sourced | 1.04 |

<!-- table: bench `python -m bench.no_such_bench`, 2026-11-25 -->
| a | b |
|---|---|
| x | 2.5 |

<!-- table: experiment `python -m experiments.ultrasound.false_alarm` -->
| a | b |
|---|---|
| undated | 10 % |

<!-- table: reference -->
| key | range |
|---|---|
| ph | 6.5-7.6 |

| a table without figures | 5 folds |
|---|---|
| x | 3 |

<!-- figures:us -->
| rendered | 0.960 |
|---|---|
<!-- /figures -->
"""


def test_a_table_of_figures_must_name_its_bench_and_date() -> None:
    problems = check_tables(TABLES_DOC, "t.md")
    assert problems == [
        "t.md:3: a table of figures without its source line "
        "(<!-- table: bench `COMMAND`, DATE -->)",
        "t.md:13: python -m bench.no_such_bench: no such module",
        "t.md:18: experiment table: name its `command` and its date",
    ]


def test_a_planted_stale_figure_fails(tmp_path: Path) -> None:
    """One digit changed in a rendered block of the real results page, or a bench table added
    without its source: the docs check reports each."""
    from tests import doc_figures

    reports = doc_figures.load_reports()
    if not {"train_segmenter_us", "evaluate_us"} <= set(reports):
        pytest.skip("no committed ultrasound metrics in this checkout")
    text = (ROOT / "docs" / "results.md").read_text()
    block = re.search(r"<!-- figures:us -->\n(.*?)<!-- /figures -->", text, re.S)
    assert block and "0." in block.group(1)
    i = block.start(1) + block.group(1).index("0.") + 2
    planted = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :]
    doc = tmp_path / "results.md"
    doc.write_text(planted)
    assert doc_figures.stale_blocks([doc], reports) == ["results.md: us"]
    doc.write_text(text + "\n| rerun | HC error mm |\n|---|---:|\n| today | 3.12 |\n")
    assert any("without its source line" in p for p in check_markdown(doc.read_text(), doc))


def test_checker_accepts_a_correct_block() -> None:
    assert check_markdown(GOOD_DOC, ROOT / "docs" / "synthetic.md") == []


def test_shell_lines_join_continuations_and_drop_comments() -> None:
    lines = shell_lines(GOOD_DOC)
    assert lines[0][0] == 2 and "--pixel-size-csv sizes.csv" in lines[0][1]
    assert [n for n, _ in lines] == [2, 4, 5, 6]
    assert split_commands(lines[1][1])[1] == ["tail", "-n", "3"]
    assert normalise(split_commands(lines[0][1])[0])[:2] == ["fetal", "score-us"]
    assert shell_lines("```python\nfetal score-ctg --bad\n```\n") == []


def test_quoted_figures_equal_the_committed_metrics() -> None:
    """README and docs/results.md quote the committed reports (``python -m tests.doc_figures``);
    a block whose report this commit lacks says so instead of quoting anything."""
    from tests import doc_figures

    committed = subprocess.run(
        ["git", "ls-files", "data/reports/*.json"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if "data/reports/evaluate_ctg.json" not in committed:
        pytest.skip("not a git checkout with committed metrics")
    texts = [doc.read_text() for doc in doc_figures.DOCS]
    names = {m["name"] for text in texts for m in doc_figures.BLOCK.finditer(text)}
    assert {"ctg", "families", "us", "headline", "headline_us", "targets", "champions",
            "monitor"} <= names  # fmt: skip
    assert doc_figures.stale_blocks() == []


def test_figures_check_flags_a_changed_metric(tmp_path: Path) -> None:
    from tests import doc_figures

    def family(auc: float) -> dict:
        return {"auc": auc, "auc_ci_low": auc - 0.1, "auc_ci_high": auc + 0.1}

    reports = {"evaluate_ctg": {"families": {"lstm": family(0.7), "logistic": family(0.72)}}}
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- figures:headline -->\nold\n<!-- /figures -->\n")
    assert doc_figures.stale_blocks([doc], reports) == ["doc.md: headline"]
    doc_figures.stale_blocks([doc], reports, write=True)
    assert "lstm 0.700 [0.600, 0.800], logistic 0.720 [0.620, 0.820]" in doc.read_text()
    assert doc_figures.stale_blocks([doc], reports) == []
    reports["evaluate_ctg"]["families"]["lstm"]["auc"] = 0.71  # a metric moves
    assert doc_figures.stale_blocks([doc], reports) == ["doc.md: headline"]
    # a block whose report is not committed says so, and is not stale for that
    doc.write_text("<!-- figures:us -->\n<!-- /figures -->\n")
    doc_figures.stale_blocks([doc], reports, write=True)
    assert "Not at this commit: `data/reports/train_segmenter_us.json`" in doc.read_text()


def test_the_segmenter_flag_rows_quote_the_report_or_say_it_lacks_them() -> None:
    """The quality flag's rows of the ``us`` block: known figures from a report that has them;
    a report from before the flag (no ``oof_flag_rate``) gets one row saying so, not an error."""
    from tests import doc_figures

    seg = {"n_images": 913, "oof_dice_mean": 0.97, "oof_dice_median": 0.98,
           "oof_hc_error_mm_mean": 2.0, "oof_hc_error_mm_median": 1.5, "oof_n_no_ellipse": 0,
           "oof_flag_rate": 0.05, "oof_n_flagged": 46, "oof_accepted_hc_error_mm_mean": 1.9,
           "oof_accepted_dice_mean": 0.98, "oof_accepted_hc_error_mm_max": 12.84}  # fmt: skip
    rows = dict(doc_figures.flag_rows(seg))
    flagged = "HC18 measurements flagged by the quality flag (out-of-fold)"
    assert rows[flagged] == "0.050 (46 of 913)"
    assert rows["HC18 accepted (unflagged) images, mean abs. HC error; Dice"] == "1.90 mm; 0.980"
    assert rows["HC18 accepted images, largest abs. HC error"] == "12.84 mm"
    old = {k: v for k, v in seg.items() if "flag" not in k and "accepted" not in k}
    [(what, figure)] = doc_figures.flag_rows(old)
    assert what == "HC18 quality flag (out-of-fold)" and figure.startswith("not in this commit")
