"""Compare trained runs side by side from their evaluation outputs: one table and one figure.

    .venv/bin/python scripts/compare_runs.py --out out/flow/compare \
        --ablation VP=out/flow/ablate_vp,flow=out/flow/ablate_flow,reflow=out/flow/ablate_reflow \
        --bpd VP=out/flow/bpd_vp,flow=out/flow/bpd_flow,reflow=out/flow/bpd_reflow \
        [--straightness out/flow/straightness.json]

Reads what ``scripts/ablate.py --workdir`` (``ablation.json``) and ``scripts/evaluate.py --likelihood``
(``report.json``) wrote for each labelled run; computes nothing new. Per run, the best sampler is the one
with the lowest geometric mean of the RMS endpoint error over the budgets it ran at every one of
(``sde_lib.evaluation.ablation.best_sampler``). Writes ``compare.{md,json,csv,png}``: a row per run (test
bits/dim, the best sampler, its endpoint error and FD at each budget, and the optional straightness
entries keyed by label) and panels of error and FD against NFE.
"""

from __future__ import annotations

import json
import os

from sde_lib import cli
from sde_lib.evaluation import ablation, report


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ablation", required=True, help="label=ablation folder,... (scripts/ablate.py --out)")
    p.add_argument("--bpd", default="", help="label=likelihood folder,... (scripts/evaluate.py --likelihood --out)")
    p.add_argument("--straightness", default="", help="a JSON file {label: {length_ratio, straightness, ...}}")
    p.add_argument("--out", default="out/compare")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def _labelled(text: str, flag: str) -> dict[str, str]:
    out = {}
    for item in cli.comma_list(text, str, flag) if text else []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"{flag}: expected label=path items, got {item!r}")
        out[label] = path
    return out


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file")
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with cli.exit_on_user_error():
        report.check_outputs([f"{a.out}/compare.{e}" for e in ("csv", "md", "json", "png")], a.overwrite)
        ablations = {k: _read_json(os.path.join(v, "ablation.json")) for k, v in
                     _labelled(a.ablation, "--ablation").items()}
        bpds = {k: _read_json(os.path.join(v, "report.json"))["rows"][0] for k, v in _labelled(a.bpd, "--bpd").items()}
        straight = _read_json(a.straightness) if a.straightness else {}
        rows, err_series, fd_series = [], [], []
        for label, result in ablations.items():
            name = ablation.best_sampler(result["rows"])
            mine = sorted((r for r in result["rows"] if r["sampler"] == name), key=lambda r: r["nfe"])
            row = {"run": label, "source": result["meta"]["source"], "sampler": name}
            if label in bpds:
                row.update(bpd=bpds[label]["bpd"], bpd_stderr=bpds[label]["bpd_stderr"], bpd_nfe=bpds[label]["nfe"])
            for key in ("length_ratio", "straightness"):
                if key in straight.get(label, {}):
                    row[key] = straight[label][key]
            for r in mine:
                row[f"err_{r['budget']}"], row[f"fd_{r['budget']}"] = r["err_rms"], r["fd"]
            rows.append(row)
            nfe = [r["nfe"] for r in mine]
            err_series.append((f"{label} ({name})", nfe, [r["err_rms"] for r in mine], None, "-"))
            fd_series.append((f"{label} ({name})", nfe, [r["fd"] for r in mine], [r["fd_err"] for r in mine], "-"))
        meta = next(iter(ablations.values()))["meta"]
        band = (meta["fd_floor"] - meta["fd_floor_err"], meta["fd_floor"] + meta["fd_floor_err"])
        panels = [report.Panel("endpoint error vs reference solve (RMS L2)", "NFE", err_series, log=True),
                  report.Panel("Fréchet distance to test digits", "NFE", fd_series, band, "real vs real", log=True)]
        budgets = sorted({int(k[4:]) for r in rows for k in r if k.startswith("err_")})
        cols = ["run", "sampler", "test bits/dim", "length ratio"] + [f"err@{b}" for b in budgets] + \
            [f"FD@{b}" for b in budgets]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            bpd = f"{r['bpd']:.3f} ± {r['bpd_stderr']:.3f}" if "bpd" in r else ""
            cells = [r["run"], r["sampler"], bpd, ablation._fmt(r.get("length_ratio"))]
            cells += [ablation._fmt(r.get(f"err_{b}")) for b in budgets] + [ablation._fmt(r.get(f"fd_{b}"))
                                                                            for b in budgets]
            lines.append("| " + " | ".join(cells) + " |")
        paths = report.write_report(a.out, "compare", rows, "\n".join(lines) + "\n", meta={"n": meta["n"]},
                                    overwrite=a.overwrite,
                                    plot=lambda path: report.plot_panels(path, panels, f"n = {meta['n']} samples, "
                                                                         "best sampler per run"))
    print("\n".join(lines))
    print(f"wrote {', '.join(paths.values())}")


if __name__ == "__main__":
    main()
