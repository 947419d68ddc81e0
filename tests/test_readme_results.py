"""The README's "Results at a glance" table against the committed results it names.

The table is written by hand; this test reads each row's `where` file and checks that the numbers
in the row are the ones in that file (at the printed precision), that the iterations stated are the
run's, and that "met" / "not met" agrees with the comparison against the paper's number in the row.
It fails when a result is updated and the README is not (or the other way round).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def glance_rows() -> list[dict]:
    text = README.read_text()
    section = text.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["result", "ours", "paper", "", "where"], header
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(dict(zip(["result", "ours", "paper", "status", "where"], cells)))
    return rows


def numbers(text: str) -> list[str]:
    return re.findall(NUMBER, text)


def as_float(printed: str) -> float:
    return float(printed.replace(",", ""))


def matches(printed: str, value: float) -> bool:
    """`printed` is `value` rounded to the decimals shown (a last-digit tie either way allowed)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(as_float(printed) - value) <= 0.5 * 10 ** -decimals + 1e-9


def stated_iterations(result: str) -> int | None:
    found = re.search(r"\((" + NUMBER + r")(?: of [\d,]+)? iterations", result)
    return int(as_float(found.group(1))) if found else None


ROWS = glance_rows()


def test_table_has_the_headline_results():
    wheres = {row["where"] for row in ROWS}
    for folder in ("results/sinusoid", "results/omniglot/5way1shot", "results/omniglot/20way1shot",
                   "results/omniglot/5way5shot", "results/omniglot/20way5shot", "results/omniglot_mlp/5way1shot",
                   "results/rl/navigation", "results/rl/halfcheetah_vel", "results/rl/halfcheetah_dir",
                   "results/rl/ant_vel", "results/rl/ant_dir", "results/benchmarks/meta_step.jsonl",
                   "results/benchmarks/maml_trpo.jsonl"):
        assert folder in wheres, f"the glance table has no row for {folder}"


def row_id(row: dict) -> str:
    return row["result"][:60]


@pytest.mark.parametrize("row", [r for r in ROWS if (ROOT / r["where"] / "metrics.json").is_file()], ids=row_id)
def test_row_matches_its_metrics(row):
    metrics = json.loads((ROOT / row["where"] / "metrics.json").read_text())
    iterations = stated_iterations(row["result"])
    if iterations is not None:
        assert iterations == metrics["iterations"], (row["result"], metrics["iterations"])
    ours = numbers(row["ours"])
    paper = [as_float(p) for p in numbers(row["paper"])]

    if "test" in metrics:  # few-shot classification: accuracy after the last test step, its CI
        accuracy, ci95 = metrics["test"]["accuracy"][-1], metrics["test"]["ci95"][-1]
        assert len(ours) == 2 and matches(ours[0], accuracy) and matches(ours[1], ci95), (row["ours"], accuracy, ci95)
        assert paper[0] == pytest.approx(metrics["paper"]["accuracy"])
        values, targets, higher_is_better = [accuracy], paper[:1], True
    elif "results" in metrics and "maml" in metrics["results"] and "returns" in metrics["results"]["maml"]:
        steps = [int(s) for s in re.search(r"after ([\d /]+) steps?", row["result"]).group(1).split("/")]
        maml = metrics["results"]["maml"]
        values = [maml["returns"][s] for s in steps]
        errors = [maml["stderr"][s] for s in steps]
        assert len(ours) == 2 * len(steps), row["ours"]
        for printed, value in zip(ours, values + errors):
            assert matches(printed, value), (row["ours"], values, errors)
        targets = [as_float(t) for t in re.findall(r"targets? (" + NUMBER + r"(?: / " + NUMBER + r")*)",
                                                   row["result"])[0].split(" / ")] \
            if "target" in row["result"] else paper[:len(steps)]
        higher_is_better = True
    else:  # sinusoid: MSE of MAML at K = 5 after the steps named
        steps = [int(s) for s in re.search(r"after ([\d /]+) steps", row["result"]).group(1).split("/")]
        mse = metrics["results"]["maml"]["K=5"]["mse"]
        values = [mse[s] for s in steps]
        assert len(ours) == len(steps), row["ours"]
        assert all(matches(p, v) for p, v in zip(ours, values)), (row["ours"], values)
        targets, higher_is_better = paper, False

    met = [(v >= t) if higher_is_better else (v <= t) for v, t in zip(values, targets)]
    status = row["status"]
    if len(met) == 1 or all(met) or not any(met):
        expected = "met" if all(met) else "not met"
        assert status == expected, (row["result"], values, targets, status)
    else:
        for step, ok in zip(steps, met):
            word = "step" if step == 1 else "steps"
            assert f"{step} {word} {'met' if ok else 'not met'}" in status, (row["result"], values, targets, status)


def test_benchmark_rows_match_their_jsonl():
    for row in ROWS:
        path = ROOT / row["where"]
        if path.suffix != ".jsonl":
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.name == "meta_step.jsonl":
            speedups = [r["speedup"] for r in records if "speedup" in r]
            printed = re.findall(r"(" + NUMBER + r")x", row["ours"])
            assert printed and all(any(matches(p, s) for s in speedups) for p in printed), (row["ours"], speedups)
            target = float(re.search(r"target (" + NUMBER + r")x", row["paper"]).group(1))
            assert (row["status"] == "met") == all(as_float(p) >= target for p in printed), row
        elif path.name == "maml_trpo.jsonl":
            seconds = [r["s_per_iter"] for r in records if "s_per_iter" in r]
            idle = numbers(row["ours"].split("(")[0])  # the idle runs' seconds, before the parenthesis
            assert idle and all(any(matches(p, s) for s in seconds) for p in idle), (row["ours"], seconds)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than '-' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Few-shot classification: Omniglot and MiniImagenet (paper section 5.2, Table 1)") == \
        "few-shot-classification-omniglot-and-miniimagenet-paper-section-52-table-1"


def test_readme_links_to_its_own_sections_resolve():
    text = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S)  # a '# comment' in code is no heading
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the README links to its own sections (contents line, results table)"
    assert [link for link in links if link not in anchors] == []
