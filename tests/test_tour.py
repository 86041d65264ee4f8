"""The quick-start tour's report (scripts/tour.py): what a call did is said truthfully, and the report joins
the parts' sections with their pictures' paths still right. No network is trained here: the parts'
measurements are the library's own, tested in their modules; the tour itself is measured in docs/results.md."""

import json
import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tour():
    return runpy.run_path(os.path.join(ROOT, "scripts", "tour.py"), run_name="tour")


def _run_folder(path, losses):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": 100 * (i + 1), "loss": loss}) + "\n")
    return str(path)


def test_training_line_says_trained_resumed_or_reused(tour, tmp_path):
    # A report that says "trained 500 steps" when the call resumed at 300 or trained nothing is the bug
    # this catches (issue 23: a second call reported "trained 500 steps in 9 s").
    run = _run_folder(tmp_path / "run", [1.5, 1.25])
    line = tour["training_line"]
    assert "trained 500 steps in 40 s" in line(run, 500, 0, 40)
    assert "resumed at step 300 and trained 200 more steps, to 500" in line(run, 500, 300, 20)
    reused = line(run, 500, 500, 3)
    assert "reused the finished run at step 500" in reused and "trained" not in reused.split(";")[0].replace(
        "reused", "")
    assert "final training loss 1.2500" in reused


def test_report_joins_the_sections_that_exist_with_their_pictures(tour, tmp_path):
    out = tmp_path / "runs" / "quickstart" / "tour"
    out.mkdir(parents=True)
    (out / "ddpm.md").write_text("## 2. DDPM\n\n![ddpm](ddpm_ancestral.png)\n")
    (out / "unconditional.md").write_text("## 1. VP\n\n![plot](ablation/ablation.png) see [docs](http://x)\n")
    report = tmp_path / "runs" / "quickstart" / "report.md"
    tour["main"](["report", "--out", str(out), "--report", str(report), "--total_seconds", "12"])
    text = report.read_text()
    # Part order is the tour's, not the files'; a missing part is left out; pictures resolve from report.md.
    assert text.index("## 1. VP") < text.index("## 2. DDPM")
    assert "unconditional, ddpm" in text and "conditional" not in text.split("\n")[2].replace("unconditional", "")
    assert "](tour/ddpm_ancestral.png)" in text and "](tour/ablation/ablation.png)" in text
    assert "](http://x)" in text
