"""The commands of docs/operations.md and deploy/k8s/README.md are real: every `ray` / `serve` subcommand and
option exists in the installed Ray's CLI, every `python -m ray_jobs.*` module exists and takes the options given,
training overrides are valid config keys, and every file passed with -f exists. A misspelt option is caught."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.deploy_checks import REPO

DOCS = [REPO / "docs" / "operations.md", REPO / "deploy" / "k8s" / "README.md"]
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands(block: str) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, comments dropped, split at operators, leading
    VAR=value assignments removed."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        cur = []
        for tok in lex:
            if tok in OPERATORS:
                out.append(cur)
                cur = []
            else:
                cur.append(tok)
        out.append(cur)
    result = []
    for argv in out:
        while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv and argv[0] == "export":
            continue
        if argv:
            result.append(argv)
    return result


def _click_roots():
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    return {"ray": ray_cli, "serve": serve_cli}


def check_command(argv: list[str], roots) -> list[str]:
    import click

    head = argv[0]
    if head in roots:
        cmd, rest, path = roots[head], argv[1:], [head]
        while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
            if rest[0] not in cmd.commands:
                return [f"`{' '.join(path)} {rest[0]}`: no such subcommand"]
            cmd, path, rest = cmd.commands[rest[0]], [*path, rest[0]], rest[1:]
        opts = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        problems = []
        for tok in rest:
            if tok == "--":
                break  # the job's entrypoint follows
            if tok.startswith("-") and tok.split("=")[0] not in opts:
                problems.append(f"`{' '.join(path)}` has no option {tok.split('=')[0]}")
        if "--" in rest:
            problems += check_command(rest[rest.index("--") + 1 :], roots)
        return problems
    if head == "python" and argv[1:2] == ["-m"] and argv[2].startswith("ray_jobs."):
        return check_module(argv[2], argv[3:])
    if head in ("kubectl", "docker"):
        files = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "-f"]
        return [f"`{head}`: no file {f}" for f in files if not (REPO / f).is_file()]
    return []


def check_module(module: str, args: list[str]) -> list[str]:
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file() or "__main__" not in path.read_text():
        return [f"python -m {module}: no such entrypoint"]
    source = path.read_text()
    problems = [f"python -m {module}: no option {a}" for a in args
                if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]  # fmt: skip
    if module == "ray_jobs.train" and not any(a.startswith("resume=") for a in args):
        from dinowm_core.config import ConfigError
        from ray_jobs.job_config import load_run_config

        try:
            load_run_config([a for a in args if "=" in a and not a.startswith("-")])
        except ConfigError as e:
            problems.append(f"python -m ray_jobs.train: {e}")
    return problems


def all_commands() -> list[list[str]]:
    return [argv for doc in DOCS for block in shell_blocks(doc.read_text()) for argv in commands(block)]


def test_runbook_covers_the_operations():
    found = {" ".join(a[:3]) for a in all_commands()}
    for needed in ("ray up -y", "ray dashboard cluster.yaml", "ray job submit", "ray job logs", "serve deploy serving/serve_config.yaml",
                   "ray down -y", "serve shutdown -y"):  # fmt: skip
        assert any(f.startswith(needed) for f in found), needed
    modules = {
        a[i + 2] for a in all_commands() for i in range(len(a) - 2) if a[i : i + 2] == ["python", "-m"]
    }
    assert {"ray_jobs.train", "ray_jobs.tune", "ray_jobs.evaluate"} <= modules
    text = (REPO / "docs" / "operations.md").read_text()
    assert "## 5. TLS" in text and "proxy_pass http://127.0.0.1:8000" in text
    assert "### SLURM" in text and "deploy/slurm/README.md" in text
    assert "](docs/operations.md)" in (REPO / "README.md").read_text()


def test_every_command_is_real():
    roots = _click_roots()
    problems = [p for argv in all_commands() for p in check_command(argv, roots)]
    assert problems == []


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "ray job submit --adress http://127.0.0.1:8265 -- python -m ray_jobs.train env=wall",
            "no option --adress",
        ),
        ("ray job tail --address http://127.0.0.1:8265 x", "no such subcommand"),
        ("serve deploy serving/serve_config.yaml --replicas 2", "no option --replicas"),
        ("ray job submit -- python -m ray_jobs.train env=wall ray.num_worker=2", "ray.num_worker"),
        ("ray job submit -- python -m ray_jobs.tune train_wall --samples 4", "no option --samples"),
        ("ray job submit -- python -m ray_jobs.serve x", "no such entrypoint"),
        ("kubectl apply -f deploy/k8s/raycluster.yml", "no file"),
    ],
    ids=[
        "misspelt-option",
        "unknown-subcommand",
        "serve-option",
        "bad-override",
        "tune-option",
        "module",
        "file",
    ],
)
def test_a_broken_command_is_caught(line, message):
    roots = _click_roots()
    problems = [p for argv in commands(line) for p in check_command(argv, roots)]
    assert any(message in p for p in problems), problems
