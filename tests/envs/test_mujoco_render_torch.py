"""A MuJoCo render followed by a torch optimizer in one process (GD planning, training beside an env).

torch's optimizers import triton, whose bundled LLVM crashed the process (SIGSEGV) when Mesa's GL driver was loaded
first; ``dinowm_core.envs.mujoco_render`` loads it before any GL library. A crash kills the interpreter, so the
sequence runs in a child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch
    from dinowm_core.envs import make_env

    env = make_env("reacher")
    env.reset(seed=0)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1).step()
    env.close()
    print("ok")
    """
)


def test_an_optimizer_after_a_mujoco_render_does_not_crash():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip().endswith("ok")
