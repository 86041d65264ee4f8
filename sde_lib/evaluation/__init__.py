"""Evaluation on top of runs and samplers: what the scripts in ``scripts/`` report.

* ``checkpoints``: sample-quality metrics and bits/dim of every checkpoint of a run (``evaluate.py``);
* ``ablation``: samplers x NFE budgets on one score source, against a reference solve (``ablate.py``);
* ``study``: the few-step study beside the official DPM-Solver (``benchmark_fewstep.py``);
* ``conditional``: guidance and inpainting tables of a labelled data set (``evaluate_conditional.py``);
* ``canvas``: prompt adherence of canvas models (``evaluate_canvas.py``);
* ``report``: CSV / JSON / markdown / PNG report files, never overwritten unless asked.
"""
