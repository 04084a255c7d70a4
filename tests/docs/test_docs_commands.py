"""The commands and config keys that README.md and docs/*.md show are ones the code accepts.

- Every command line in a ```bash / ```sh / ```console block, and every inline `dinowm ...` (or
  `python -m ray_jobs...`, `ray job submit ... -- ...`) code span, is parsed as the program would parse it,
  without running anything: ``dinowm ...`` by the click command behind the typer app (its callbacks replaced by
  a recorder), ``python -m ray_jobs.X ...`` by that module's ``parser()`` (``ray_jobs.train``: its
  ``split_args``). The ``key=value`` overrides a command carries are then validated the way that command
  validates them (the schema, the job settings, ``dinowm serve``'s app settings), building nothing.
  ``make X`` needs a Makefile target X and ``python path/x.py`` an existing file.
- Every backticked dotted key whose first part is a config section (`planner.cem.topk`, `ray.num_workers`,
  `training.*`) exists in the schema; dotted names that only look like one are listed in ``NOT_CONFIG_KEYS``
  with the reason.

Placeholders are allowed: ``<run name>``, ``CKPT``, ``$VAR`` and ``...`` stand for a value, ``[--opt X]`` for
an optional part of a synopsis. A failure names the file and line, the command and what is wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PLACEHOLDER = "PLACEHOLDER"

#: dotted names in backticks that start like a config key but are not one
NOT_CONFIG_KEYS = {
    "env.step": "gymnasium's Env.step, the method that takes an action in env units",
    "encoder.feature_key": "the original DINO-WM's hydra.yaml key (docs/migration.md maps it to encoder.feature)",
    "mlflow.parentRunId": "MLflow's tag that nests a trial's run under its sweep",
    "ray._private.worker._global_node.metrics_export_port": "a Ray attribute (the embedded cluster's port)",
    "encoder.safetensors": "a file name (the frozen encoder's weights, which checkpoints leave out)",
    "predictor.dpth": "quoted on purpose: the error message a misspelt key gets",
}
#: pages about another code base: their dotted names are the original DINO-WM's config keys, not ours
NOT_OUR_KEYS = {"docs/reference.md": "what the original DINO-WM computes, in its own config keys"}


# ---- finding commands and code spans ----------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    file: str  # repository-relative
    line: int
    text: str
    inline: bool

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _split_fences(text: str) -> tuple[list[tuple[int, str, list[str]]], str]:
    """-> (fenced blocks as (first content line, language, lines), the text with every fenced line blanked)."""
    blocks, prose, lines = [], [], text.splitlines()
    lang, start, body = None, 0, []
    for i, line in enumerate(lines, 1):
        fence = line.strip().startswith("```")
        if lang is None and fence:
            lang, start, body = line.strip()[3:].strip().lower(), i + 1, []
            prose.append("")
        elif lang is not None and fence:
            blocks.append((start, lang, body))
            lang = None
            prose.append("")
        elif lang is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def _block_commands(rel: str, start: int, lang: str, body: list[str]) -> Iterator[Snippet]:
    pending, first = "", 0
    for offset, raw in enumerate(body):
        line = raw.rstrip()
        if lang == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue  # output, not a command
            line = line.lstrip()[2:]
        if not pending:
            first = start + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            yield Snippet(rel, first, command, inline=False)


def code_spans(path: Path) -> Iterator[Snippet]:
    """Every inline code span outside fenced blocks (spans may wrap onto the next line)."""
    rel = str(path.relative_to(ROOT))
    _, prose = _split_fences(path.read_text())
    for m in re.finditer(r"(?<!`)`(?!`)((?:[^`\n]|\n(?!\s*\n))+?)`(?!`)", prose):
        yield Snippet(rel, prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()), inline=True)


INLINE_COMMAND = re.compile(r"^(dinowm\s|python3? -m ray_jobs\.|ray job submit\s)")


def doc_commands() -> list[Snippet]:
    out = []
    for path in DOCS:
        rel = str(path.relative_to(ROOT))
        blocks, _ = _split_fences(path.read_text())
        for start, lang, body in blocks:
            if lang in SHELL_LANGS:
                out.extend(_block_commands(rel, start, lang, body))
        out.extend(s for s in code_spans(path) if INLINE_COMMAND.match(s.text))
        out.extend(indented_commands(path))
    return out


def indented_commands(path: Path) -> Iterator[Snippet]:
    """Commands in indented (4-space) code blocks outside fences: lines that start like a command."""
    rel = str(path.relative_to(ROOT))
    _, prose = _split_fences(path.read_text())
    for i, line in enumerate(prose.splitlines(), 1):
        if re.match(r"^(    |\t)\s*", line) and INLINE_COMMAND.match(line.strip()):
            yield Snippet(rel, i, line.strip(), inline=False)


# ---- turning a documented line into argv lists ------------------------------------------------------------


def simple_commands(text: str) -> list[list[str]]:
    """A shell line -> its simple commands as argv lists, placeholders made into plain words, leading
    ``VAR=value`` assignments and redirections dropped."""
    text = re.sub(r"<[^<>\s][^<>]*>", PLACEHOLDER, text)  # <run name>, <checkpoint dir>
    text = re.sub(r"(?<=\s)\[[^\]]*\]", " ", text)  # [--dataset DATASET] [overrides] in a synopsis
    text = re.sub(r"=(\.\.\.|…)(?=\s|$)", f"={PLACEHOLDER}", text)  # data.path=...
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    tokens = iter(lexer)
    for token in tokens:
        if token in (";", "&", "&&", "|", "||"):
            commands.append(current)
            current = []
        elif token in ("...", "…"):
            continue
        elif re.fullmatch(r"\d?>>?|&>|<", token):
            next(tokens, None)  # a redirection and its target
        elif re.fullmatch(r"\d?>&\d", token):
            continue
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def is_placeholder(word: str) -> bool:
    """``SPACE``, ``CKPT``, ``<run name>`` (made PLACEHOLDER), ``$CKPT_BASE/x``: a value the reader supplies."""
    return PLACEHOLDER in word or word.startswith("$") or re.fullmatch(r"[A-Z][A-Z0-9_]*", word) is not None


# ---- validating overrides the way each command does ----------------------------------------------------------


def _validate_run(overrides: list[str]) -> None:
    """dinowm train / config / model / quickstart: model keys + ray.* / mlflow.*."""
    from ray_jobs.job_config import load_run_config

    load_run_config(overrides)


def _validate_train(overrides: list[str]) -> None:
    from ray_jobs.train import split_args

    rest, _options = split_args(overrides)  # resume=, run_name=
    _validate_run(rest)


def _validate_plan(overrides: list[str], base_overrides: list[str] | None = None) -> None:
    """dinowm plan / ray_jobs.evaluate: on a checkpoint's config (here the default one) with the env's
    planning preset; eval.* keys also without the prefix; job keys."""
    from dinowm_core.presets import load_config, plan_config
    from ray_jobs.evaluate import eval_shortcuts
    from ray_jobs.job_config import load_job_config, split_job_overrides

    core, job = split_job_overrides(overrides)
    load_job_config(job)
    plan_config(load_config(base_overrides or []), eval_shortcuts(core))


def _validate_tune(space: str | None, args: list[str]) -> None:
    from dinowm_core.presets import load_config
    from ray_jobs.job_config import load_job_config, split_job_overrides
    from ray_jobs.tune_space import load_space

    if space is None or is_placeholder(space):  # --resume: the sweep's own settings; a synopsis
        return
    loaded = load_space(space)
    if loaded.kind == "planner":
        if not args or "=" in args[0]:
            raise ValueError(f"{space} is a planner space: the checkpoint comes first")
        args = args[1:]
    core, job = split_job_overrides(args)
    load_job_config(job)
    if loaded.kind == "planner":
        env = [f"env={loaded.env}"] if loaded.env else []
        _validate_plan([*loaded.base_overrides(), *core], env)
    else:
        load_config([*loaded.base_overrides(), *core])


def _validate_serve(params: dict[str, Any]) -> None:
    from ray_jobs.cli_serve import app_args

    options = {k: params[k] for k in ("replicas", "max_batch_size", "batch_wait_s")}
    app_args(params["ckpt"], params["overrides"], **options)


def validate_dinowm(path: tuple[str, ...], params: dict[str, Any]) -> None:
    """The overrides of one parsed ``dinowm`` command, checked as that command checks them."""
    overrides = list(params.get("overrides") or [])
    if path == ("train",):
        _validate_train(overrides)
    elif path == ("plan",):
        _validate_plan(overrides)
    elif path == ("serve",):
        _validate_serve({**params, "overrides": overrides})
    elif path == ("tune",):
        _validate_tune(params.get("space"), list(params.get("args") or []))
    elif path == ("import-checkpoint",):
        from dinowm_core.presets import load_config

        load_config(overrides)  # on top of the imported config
    elif "overrides" in params:  # config, model, quickstart, and commands added later
        _validate_run(overrides)


class _Parsed(Exception):
    pass


@pytest.fixture(scope="module")
def dinowm_cli():
    """``parse(argv) -> (command path, params)``: click parses ``argv`` exactly as ``dinowm`` would; the
    command's callback only records what it was given."""
    from ray_jobs.cli import app

    root = get_command(app)

    def record(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer ships its own copy of click: no isinstance)
            cmd.callback = lambda **_: None
            for name, sub in cmd.commands.items():
                record(sub, (*path, name))
        else:

            def callback(**params: Any) -> None:
                raise _Parsed(path, params)

            cmd.callback = callback

    record(root, ())

    def parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                root.main(argv, prog_name="dinowm", standalone_mode=False)
        except _Parsed as parsed:
            return parsed.args
        raise ValueError("no command ran (a group without its subcommand?)")

    return parse


def check_module(module_name: str, argv: list[str], inline: bool = False) -> None:
    """``python -m ray_jobs.X argv``: parsed by the module's parser, its overrides validated."""
    if importlib.util.find_spec(module_name) is None:
        raise ValueError(f"no module {module_name}")
    module = importlib.import_module(module_name)
    if module_name == "ray_jobs.train":
        _validate_train(argv)
        return
    if not hasattr(module, "parser"):
        raise ValueError(
            f"{module_name} has no parser() to check the command against: add one that main() uses"
        )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = module.parser().parse_args(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1]
        if inline and "arguments are required" in message:
            return  # prose naming the entrypoint, not a full command line
        raise ValueError(message) from None
    if module_name == "ray_jobs.evaluate":
        _validate_plan(ns.overrides)
    elif module_name == "ray_jobs.tune":
        _validate_tune(ns.space, ns.args)
    elif hasattr(ns, "overrides"):
        _validate_run(ns.overrides)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def check_command(argv: list[str], parse, snippet: Snippet) -> bool:
    """Raises with the problem; returns whether ``argv`` was something this test knows how to check."""
    if argv[0] == "dinowm":
        try:
            path, params = parse(argv[1:])
        except typer.TyperException as e:
            if (
                snippet.inline and type(e).__name__ == "MissingParameter"
            ):  # prose naming a command (`dinowm plan` applies ...), not a full command line
                return True
            raise
        validate_dinowm(path, params)
        return True
    if argv[:3] == ["ray", "job", "submit"]:
        if "--" not in argv:
            raise ValueError("ray job submit without `--` before the entrypoint")
        return check_command(argv[argv.index("--") + 1 :], parse, snippet)
    if (
        argv[0] in ("python", "python3")
        and len(argv) > 2
        and argv[1] == "-m"
        and argv[2].startswith("ray_jobs.")
    ):
        check_module(argv[2], argv[3:], snippet.inline)
        return True
    if argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        if not (ROOT / argv[1]).is_file():
            raise ValueError(f"no file {argv[1]}")
        return True
    if argv[0] == "make" and len(argv) > 1:
        missing = [t for t in argv[1:] if not t.startswith("-") and t not in _make_targets()]
        if missing:
            raise ValueError(f"no Makefile target {', '.join(missing)}")
        return True
    return False


COMMANDS = doc_commands()


def test_the_docs_have_commands_to_check():
    assert len([s for s in COMMANDS if not s.inline]) > 50 and len([s for s in COMMANDS if s.inline]) > 20


@pytest.mark.parametrize("snippet", COMMANDS, ids=lambda s: f"{s.file}:{s.line}")
def test_documented_command_parses(snippet, dinowm_cli):
    problems = []
    for argv in simple_commands(snippet.text):
        try:
            check_command(argv, dinowm_cli, snippet)
        except typer.TyperException as e:  # click's usage errors, as typer raises them
            problems.append(f"`{shlex.join(argv)}`: {e.format_message()}")
        except (ValueError, LookupError) as e:  # ConfigError is a ValueError
            problems.append(f"`{shlex.join(argv)}`: {e}")
    if problems:
        pytest.fail(f"{snippet.where()}\n  " + "\n  ".join(problems), pytrace=False)


# ---- dotted config keys in backticks ---------------------------------------------------------------------


def schema_tree() -> tuple[set[str], set[str], set[str]]:
    """-> (every dotted key and section, the mapping-typed keys that take any sub-key, the top-level sections)."""
    from pydantic import BaseModel

    from dinowm_core.config import Config
    from ray_jobs.job_config import JobConfig

    keys, open_keys = set(), set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            keys.add(key)
            ann = field.annotation
            candidates = [ann, *getattr(ann, "__args__", ())]
            sub = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
            if sub:
                walk(sub[0], f"{key}.")
            elif ann is dict or getattr(ann, "__origin__", None) is dict:
                open_keys.add(key)

    walk(Config, "")
    walk(JobConfig, "")
    sections = {k for k in keys if "." not in k and any(o.startswith(f"{k}.") for o in keys | open_keys)}
    sections |= {k for k in open_keys if "." not in k}
    return keys, open_keys, sections


DOTTED = re.compile(r"[a-z_][a-z0-9_]*(?:\.(?:[A-Za-z0-9_]+|\*))+")


def key_mentions() -> Iterator[tuple[Snippet, str]]:
    for path in DOCS:
        if str(path.relative_to(ROOT)) in NOT_OUR_KEYS:
            continue
        for span in code_spans(path):
            if INLINE_COMMAND.match(span.text):
                continue  # checked as a command
            for token in re.split(r"[\s,)\[\]{}'\"]+", span.text):
                key = re.split(r"[=:(]", token, maxsplit=1)[0]
                if DOTTED.fullmatch(key) and not token.startswith(f"{key}("):  # a call: env.step(a)
                    yield span, key


def test_backticked_config_keys_exist():
    keys, open_keys, sections = schema_tree()
    unknown = []
    for span, key in key_mentions():
        if key.split(".")[0] not in sections or key in NOT_CONFIG_KEYS:
            continue
        base = key.removesuffix(".*")
        if base in keys or any(base.startswith(f"{o}.") for o in open_keys):
            continue
        unknown.append(f"{span.file}:{span.line}: `{key}` (in `{span.text}`)")
    assert not unknown, (
        "dotted keys in the docs that the config schema does not have (fix the key, or add it to NOT_CONFIG_KEYS "
        "in tests/docs/test_docs_commands.py with the reason it is not a config key):\n  "
        + "\n  ".join(unknown)
    )


def test_the_key_check_sees_keys():
    mentions = {key for _, key in key_mentions()}
    assert {"planner.cem.opt_steps", "ray.num_workers", "training.window_stride"} <= mentions


def test_a_misspelt_key_fails_the_check():
    keys, open_keys, sections = schema_tree()
    assert "planner.cem.topk" in keys and "planner.cem.top_k" not in keys
    assert "env.kwargs" in open_keys and "planner" in sections and "ray" in sections


# ---- the command check fails where it should --------------------------------------------------------------


@pytest.mark.parametrize(
    "line, problem",
    [
        ("dinowm plan CKPT planner.cem.topk=999", "must not exceed planner.cem.num_samples"),
        ("dinowm train env=wall training.epochz=3", "training.epochz: unknown key"),
        ("dinowm train env=wall ray.num_workerz=2", "ray.num_workerz: unknown key"),
        ("dinowm plan CKPT --rayy", "No such option"),
        ("dinowm data generate --env wall --out x", "Missing option"),
        ("dinowm serve CKPT request_timeout=10", "request_timeout"),
        ("dinowm tune train_wall data.path=d predictor.dpth=2", "predictor.dpth: unknown key"),
        ("ray job submit -- python -m ray_jobs.evaluate CKPT n_evalz=3", "n_evalz: unknown key"),
        ("ray job submit -- python -m ray_jobs.generate --env wall", "required"),
        ("ray job submit -- python -m ray_jobs.nope x=1", "no module ray_jobs.nope"),
        ("make nothing-like-this", "no Makefile target"),
        ("python bench/no_such_script.py", "no file"),
    ],
)
def test_a_wrong_command_fails_the_check(line, problem, dinowm_cli):
    snippet = Snippet("README.md", 1, line, inline=False)
    with pytest.raises((typer.TyperException, ValueError)) as info:
        for argv in simple_commands(line):
            check_command(argv, dinowm_cli, snippet)
    message = info.value.format_message() if isinstance(info.value, typer.TyperException) else str(info.value)
    assert problem in message


def test_placeholders_and_synopses_are_read_as_values():
    assert simple_commands("dinowm train resume=<run name> ...") == [
        ["dinowm", "train", f"resume={PLACEHOLDER}"]
    ]
    assert simple_commands("dinowm import-checkpoint RUN_DIR --out DIR [--dataset DATASET] [overrides]") == [
        ["dinowm", "import-checkpoint", "RUN_DIR", "--out", "DIR"]
    ]
    assert simple_commands("X=1 dinowm plan C seeds=[0,1] && make docs  # note") == [
        ["dinowm", "plan", "C", "seeds=[0,1]"],
        ["make", "docs"],
    ]
