"""Probability-flow ODE samplers with diffrax's own solvers: fixed-step Euler, Heun, midpoint and Tsit5
on the whole batch, and an error-controlled Dopri5 / Tsit5 solve per sample.

The drift is ``sde.reverse_drift(x, t, score)`` = f(t) x - g(t)^2 score / 2. Tsit5 is first-same-as-last:
6 evaluations per step after one at the start. The adaptive solve counts every attempted step
(``step_control.CountingPIDController``), so ``info["nfe"]`` is exact per sample.
"""

from __future__ import annotations

import diffrax
import equinox as eqx

from sde_lib.sampling.api import bind_score, per_row, saveat
from sde_lib.sampling.registry import Option, Sampler, register
from sde_lib.step_control import CountingPIDController

_ADAPTIVE_ODE = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


def _ode_adaptive(sde, score_fn, x, row_keys, cond, eps, o):
    """Error-controlled PF-ODE solves from T to eps, one per sample (vmapped)."""
    pid = diffrax.PIDController(rtol=o["rtol"], atol=o["atol"])
    solver = _ADAPTIVE_ODE[o["solver"]]()
    controller = CountingPIDController(pid, len(solver.tableau.c) + 1, bool(solver.tableau.fsal))
    save = eqx.tree_at(lambda s: s.controller_state, saveat(o["save_trajectory"]), True)
    # An explicit first step: diffrax's automatic choice would spend evaluations nobody counts.
    dt0 = (sde.T - eps) / 100 if o["dt0"] is None else abs(float(o["dt0"]))

    def one(y0, key, c):
        score = bind_score(score_fn, c)
        term = diffrax.ODETerm(lambda t, y, args: sde.reverse_drift(y[None], t, score(y[None], t))[0])
        sol = diffrax.diffeqsolve(term, solver, t0=sde.T, t1=eps, dt0=-dt0, y0=y0, stepsize_controller=controller,
                                  saveat=save, max_steps=int(o["max_steps"]), throw=False)
        return sol.ys[-1], sol.controller_state[1], (sol.ts, sol.ys), sol.result == diffrax.RESULTS.successful

    ys, nfe, traj, solved = per_row(one, x, row_keys, cond)
    return ys, nfe, (traj if o["save_trajectory"] else None), solved


for _name, _cls, _nfe, _start in (("ode_euler", diffrax.Euler, 1, 0), ("ode_heun", diffrax.Heun, 2, 0),
                                  ("ode_midpoint", diffrax.Midpoint, 2, 0), ("ode_tsit5", diffrax.Tsit5, 6, 1)):
    register(Sampler(_name, family="ode", terms="probability_flow", nfe_per_step=_nfe, startup_nfe=_start,
                     doc=f"diffrax `{_cls.__name__}`", solver=lambda sde, steps, o, c=_cls: c()))
register(Sampler("ode_adaptive", family="ode", grid=None, doc="`Dopri5`/`Tsit5` + `PIDController`, per sample",
                 options=(Option("solver", "dopri5", "dopri5 | tsit5", lambda v: v in _ADAPTIVE_ODE),),
                 adaptive=_ode_adaptive))
