"""
Every shell command in the docs runs as written, from the repository root, after ``make demo``.

The test reads ``README.md``, ``bundles/*/docs/README.md`` and ``docs/*.md``, takes every fenced block whose info
string is ``bash`` (other blocks are data lists, outputs, file layouts: ``json``, ``text``, ``python``), joins
backslash continuations, drops comments and blank lines and splits the block into commands (a ``for ... done``
loop is one command). Each command is one test, named after its doc and line (``bundles/dae_btcv_seg/docs/README.md:123``):

- no placeholder may remain (``<list.json>``, ``$B``, ``M.pt``, ``/data/...``, ``/abs/path``, ``HOST:PORT``);
- a **quick** command (``--help``, the data-list and check tools, evaluation, inference and export on the demo
  weights, ``verify_metadata``) is run with ``bash`` (cwd the repository root, ``PYTHONPATH`` the repository,
  the environment's ``bin`` first on ``PATH``, 300 s timeout) and must exit 0 without touching the demo's
  outputs (``runs/demo``, ``data/sample``);
- a **slow** command (training, ``torchrun``, serving, benchmarks, learning checks, the pretext comparison,
  ``make``, downloads) is
  checked statically: ``bash -n``, and every input path it names (configs, ``--pretrained_path``,
  ``--dataset_dir``, ``--datalist``, ``--checkpoint``, ...) exists after the demo, or is written by an earlier
  command of the same doc (run first when that command is quick), or is a download listed in a bundle's
  ``large_files.yml``.

Marker ``docs``, outside the default suite: ``make test-docs`` (after ``make demo``). The whole module is
skipped when the demo has not been run.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "runs" / "demo" / "dae_btcv_seg" / "models" / "model.pt"
TIMEOUT_S = 300
SHELL_INFO = {"bash", "sh", "shell"}
# what `make demo` wrote: a quick doc command must leave it as it is
PROTECTED = [REPO / "runs" / "demo", REPO / "data" / "sample"]

pytestmark = pytest.mark.docs

if not DEMO_MODEL.is_file():
    pytest.skip(
        f"the doc commands run on the outputs of `make demo`, and {DEMO_MODEL.relative_to(REPO)} does not exist: "
        "run `make demo` first",
        allow_module_level=True,
    )


def doc_files() -> list[str]:
    docs = [REPO / "README.md", *sorted(REPO.glob("bundles/*/docs/README.md")), *sorted(REPO.glob("docs/*.md"))]
    return [str(path.relative_to(REPO)) for path in docs if path.is_file()]


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)")


def fenced_blocks(doc: str) -> list[tuple[int, str, list[str]]]:
    """(line number of the opening fence, info string, lines) of every fenced block of ``doc``."""
    blocks, current = [], None
    for number, line in enumerate((REPO / doc).read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if current is None:
            if match:
                current = (number, match.group(2).lower(), match.group(1), [])
        elif match and match.group(1)[0] == current[2][0] and len(match.group(1)) >= len(current[2]) and not match.group(2):
            blocks.append((current[0], current[1], current[3]))
            current = None
        else:
            current[3].append(line)
    if current is not None:
        blocks.append((current[0], current[1], current[3]))
    return blocks


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    cwd: str = ""  # set by an earlier `cd DIR` of the same block, as in a shell

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _without_comments(text: str) -> str:
    """``text`` without ``# ...`` comments (a ``#`` starting a word; ``--_meta_#network...`` is no comment)."""
    return re.sub(r"(^|[ \t])#[^\n]*", r"\1", text, flags=re.M)


OPENERS = {"for", "while", "until", "if", "case", "{"}
CLOSERS = {"done", "fi", "esac", "}"}
SEPARATORS = {";", "&&", "||", "|", "&", "do", "then", "else", "elif", "(", "{"}


def _depth_change(text: str) -> int:
    """Compound commands opened minus closed on one line (``for ... do`` +1, ``done`` -1)."""
    try:
        lexer = shlex.shlex(_without_comments(text), posix=True, punctuation_chars=";&|(){}")
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError:
        return 0
    change, at_start = 0, True
    for token in tokens:
        if at_start and token in OPENERS:
            change += 1
        elif at_start and token in CLOSERS:
            change -= 1
        at_start = token in SEPARATORS or token in OPENERS or token in CLOSERS
    return change


def commands_of(doc: str) -> list[Command]:
    commands = []
    for fence_line, info, lines in fenced_blocks(doc):
        if info not in SHELL_INFO:
            continue
        logical, buffer, start = [], "", None
        for offset, line in enumerate(lines):
            if start is None:
                start = fence_line + 1 + offset
            stripped = line.rstrip()
            if stripped.endswith("\\") and not stripped.lstrip().startswith("#"):
                buffer += stripped[:-1].rstrip() + " "
                continue
            logical.append((start, buffer + line.strip() if buffer else line.strip()))
            buffer, start = "", None
        if buffer:
            logical.append((start, buffer.strip()))
        current, depth, cwd = None, 0, ""
        for number, text in logical:
            if not text or text.startswith("#"):
                continue
            current = (number, [text]) if current is None else (current[0], current[1] + [text])
            depth += _depth_change(text)
            if depth <= 0:
                commands.append(Command(doc, current[0], "\n".join(current[1]), cwd))
                change = re.fullmatch(r"cd\s+(\S+)", _without_comments(commands[-1].text).strip())
                if change:
                    cwd = change.group(1)
                current, depth = None, 0
        if current is not None:
            commands.append(Command(doc, current[0], "\n".join(current[1]), cwd))
    return commands


ALL_COMMANDS = [command for doc in doc_files() for command in commands_of(doc)]

# placeholders a reader would have to replace: none may be left
PLACEHOLDERS = [
    (re.compile(r"<[A-Za-z_][^<>\n]*[^\s<>]>"), "a <placeholder>"),
    (re.compile(r"\$\{?B\b"), "the undefined variable $B"),
    (re.compile(r"(?<![\w./-])M\.pt\b"), "the placeholder M.pt"),
    (re.compile(r"(?<![\w.$-])/data/"), "a path under /data/ (user data)"),
    (re.compile(r"/abs/path"), "the placeholder /abs/path"),
    (re.compile(r"(?<![\w.$-])/weights/"), "a path under /weights/ (user files)"),
    (re.compile(r"HOST:PORT|\bFILE\b"), "a placeholder in capitals"),
]


def _unquoted(text: str) -> str:
    """``text`` without its quoted strings (a ``"<...>"`` inside quotes is data, not a placeholder)."""
    return re.sub(r"'[^']*'|\"(?:\\.|[^\"\\])*\"", "''", text)


def placeholders(command: Command) -> list[str]:
    found, text = [], _without_comments(command.text)
    for pattern, what in PLACEHOLDERS:
        subject = _unquoted(text) if what == "a <placeholder>" else text
        for match in pattern.finditer(subject):
            found.append(f"{what}: {match.group(0)!r}")
    return found


# commands checked statically, with the reason (first match wins)
SLOW = [
    (re.compile(r"(^|[\s;&|(])torchrun\s"), "multi-process training (torchrun)"),
    (re.compile(r"(^|[\s;&|(])(sbatch|srun)\s|tools/cluster/"), "multi-node training (a cluster launcher)"),
    (re.compile(r"(^|[\s;&|(])make(\s|$)"), "a make target"),
    (re.compile(r"\bmlflow\s+(ui|server)\b"), "serves the MLflow UI"),
    (re.compile(r"(^|[\s;&|(/])tensorboard\s"), "serves TensorBoard"),
    (re.compile(r"tools\.monailabel_serve\s+(serve|install|setup_app)\b"), "MONAI Label server or its environment (make monailabel-env)"),
    (re.compile(r"(^|[\s;&|(])curl\s"), "needs a running server"),
    (re.compile(r"tools\.benchmark\b"), "benchmark"),
    (re.compile(r"tools\.learning_check_\w+"), "learning check (tens of minutes)"),
    (re.compile(r"tools\.compare_pretexts\b"), "pretrains and fine-tunes every method (tens of minutes)"),
    (re.compile(r"(^|[\s;&|(/])(pip|pip3)\s+install\b|-m\s+pip\s+install\b|-m\s+venv\b"), "installs packages"),
    (re.compile(r"download_large_files|monai\.bundle\s+download\b(?!.*--url\s+[\"']?file://)"), "downloads from the internet"),
    (re.compile(r"--stem\s+conv\b"), "needs the DAE authors' published weights (a download)"),
    (re.compile(r"DAE_SSL_WEIGHTS\.zip"), "needs the DAE authors' published weights (a download)"),
]


def slow_reason(command: Command) -> str | None:
    if re.search(r"(^|\s)--help\b", command.text) and "\n" not in command.text:
        return None
    for pattern, reason in SLOW:
        if pattern.search(command.text):
            return reason
    for root in output_roots(command):
        if any(root == protected or protected in root.parents for protected in PROTECTED):
            return f"a step of make demo (writes into {root.relative_to(REPO)}; make demo runs it)"
    if is_training(command):
        return "training (monai.bundle run with the training configs)"
    return None


def is_training(command: Command) -> bool:
    """One ``monai.bundle run`` without evaluate.json or inference.json (a loop may hold several) trains."""
    for segment in re.split(r"\n|;|&&|\|\|", _without_comments(command.text)):
        if re.search(r"monai\.bundle\s+run\b", segment) and not re.search(r"(evaluate|inference)\.json", segment):
            return True
    return False



# options naming inputs that must exist, and outputs that later commands may read
INPUT_OPTIONS = {
    "--config_file", "--meta_file", "--pretrained_path", "--dataset_dir", "--data_dir", "--datalist", "--checkpoint",
    "--ckpt_file", "--image", "--csv", "--test_dir", "--bundle_path", "--model",
}
OUTPUT_OPTIONS = {"--output_dir", "--output", "--ckpt_dir", "--bundle_root", "--work_dir", "--filepath", "--app_dir", "--bundle_dir"}


def _loop_values(text: str) -> dict[str, str]:
    """``for f in 0 1 2`` -> {"f": "0"}: the static checks look at the loop's first iteration."""
    return {name: values.split()[0] for name, values in re.findall(r"\bfor\s+(\w+)\s+in\s+([^;\n]+)", text)}


def _base(command: Command) -> Path:
    """The folder the command's relative paths start from: the repository, or where a ``cd`` took it."""
    change = re.match(r"\s*cd\s+(\S+)\s*&&", command.text)
    return REPO / command.cwd / (change.group(1) if change else "")


def _options(command: Command) -> list[tuple[str, str]]:
    text = command.text
    for name, value in _loop_values(text).items():
        text = re.sub(rf"\${{?{name}\b}}?", value, text)
    text = text.replace("$PWD", str(REPO)).replace("${PWD}", str(REPO))
    try:
        tokens = shlex.split(_without_comments(text))
    except ValueError:
        return []
    pairs = []
    for index, token in enumerate(tokens):
        if token.startswith("--") and "=" in token:
            pairs.append(tuple(token.split("=", 1)))
        elif token.startswith("--") and index + 1 < len(tokens):
            pairs.append((token, tokens[index + 1]))
    return pairs


def _paths(value: str) -> list[str]:
    if value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
        return [v for v in parsed if isinstance(v, str)]
    if value.startswith("$") or "://" in value:
        return []
    return [value]


def _in_repo(path: str, base: Path = REPO) -> Path | None:
    resolved = Path(os.path.normpath(base / os.path.expanduser(path)))
    return resolved if resolved == REPO or REPO in resolved.parents else None


def input_paths(command: Command) -> list[Path]:
    found, base = [], _base(command)
    for option, value in _options(command):
        if option in INPUT_OPTIONS:
            found += [p for p in (_in_repo(v, base) for v in _paths(value)) if p is not None]
    return found


def output_roots(command: Command) -> list[Path]:
    roots, base, options = [], _base(command), dict(_options(command))
    training = is_training(command)
    for option, value in options.items():
        # evaluation and inference read the model of --ckpt_dir, and write to --output_dir when it is given
        if not training and (option == "--ckpt_dir" or option == "--bundle_root" and "--output_dir" in options):
            continue
        if option in OUTPUT_OPTIONS:
            roots += [p for p in (_in_repo(v, base) for v in _paths(value)) if p is not None]
    # the data-list tools write next to the data unless told otherwise
    for tool, data, output in (("brats_datalist", "--data_dir", "--output"), ("btcv_datalist", "--dataset_dir", "--output_dir")):
        if f"tools.{tool}" in command.text and data in options and output not in options:
            roots += [p for p in (_in_repo(v, base) for v in _paths(options[data])) if p is not None]
    return roots


def downloads() -> set[Path]:
    """Files a bundle's ``large_files.yml`` downloads."""
    found = set()
    for listing in REPO.glob("bundles/*/large_files.yml"):
        for path in re.findall(r"^\s*-?\s*path:\s*[\"']?([^\"'\n]+)", listing.read_text(), flags=re.M):
            found.add(Path(os.path.normpath(listing.parent / path.strip())))
    return found


def producer_of(command: Command, path: Path) -> Command | None:
    """The last earlier command of the same doc that writes under a folder containing ``path``."""
    earlier = [c for c in ALL_COMMANDS if c.doc == command.doc and c.line < command.line]
    for candidate in reversed(earlier):
        if any(path == root or root in path.parents for root in output_roots(candidate)):
            return candidate
    return None


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    venv_bin = REPO / ".venv" / "bin"
    bin_dir = venv_bin if venv_bin.is_dir() else Path(sys.prefix) / "bin"
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _fingerprint() -> dict[str, tuple[int, int]]:
    state = {}
    for root in PROTECTED:
        for folder, _, files in os.walk(root, followlinks=True):  # the demo's folders may be links
            for name in files:
                path = os.path.join(folder, name)
                stat = os.stat(path)
                state[os.path.relpath(path, REPO)] = (stat.st_size, stat.st_mtime_ns)
    return state


_RESULTS: dict[str, tuple[int, str, float]] = {}


def run_quick(command: Command) -> tuple[int, str, float]:
    """Run ``command`` once per session (a later command may need its output); its inputs' producers first."""
    if command.id not in _RESULTS:
        for path in input_paths(command):
            producer = producer_of(command, path) if not path.exists() else None
            if producer is not None and slow_reason(producer) is None:
                run_quick(producer)
        before = _fingerprint()
        started = time.perf_counter()
        try:
            completed = subprocess.run(
                ["bash", "-c", "set -eo pipefail\n" + (f"cd {command.cwd}\n" if command.cwd else "") + command.text],
                cwd=REPO,
                env=_environment(),
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            status, output = completed.returncode, completed.stdout + completed.stderr
        except subprocess.TimeoutExpired as error:
            partial = [part.decode(errors="replace") if isinstance(part, bytes) else part or "" for part in (error.stdout, error.stderr)]
            status, output = -1, f"timed out after {TIMEOUT_S} s\n{''.join(partial)}"
        elapsed = time.perf_counter() - started
        after = _fingerprint()
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed and status == 0:
            status, output = -2, f"wrote into the demo's outputs ({len(changed)} files, e.g. {changed[:3]})\n{output}"
        _RESULTS[command.id] = (status, output, elapsed)
    return _RESULTS[command.id]


@pytest.mark.parametrize("doc", doc_files())
def test_fences_have_an_info_string(doc):
    """Every fenced block says what it holds (bash, json, python, text): an unlabelled block escapes this test."""
    bare = [line for line, info, _ in fenced_blocks(doc) if not info]
    assert not bare, f"{doc}: fenced blocks without an info string at lines {bare} (use bash, json, python or text)"


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[c.id for c in ALL_COMMANDS])
def test_doc_command(command):
    found = placeholders(command)
    assert not found, f"{command.id}: {'; '.join(found)} in\n{command.text}"
    reason = slow_reason(command)
    if reason is None:
        status, output, elapsed = run_quick(command)
        assert status == 0, f"{command.id} exited with {status} after {elapsed:.0f} s:\n{command.text}\n---\n{output[-4000:]}"
        return
    # slow: static checks only
    syntax = subprocess.run(["bash", "-n", "-c", command.text], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{command.id}: bash -n: {syntax.stderr}"
    missing = []
    downloaded = downloads()
    needs_download = "published weights" in reason or "internet" in reason
    for path in input_paths(command):
        if path.exists() or path in downloaded:
            continue
        if needs_download and path.parent.name == "models" and path.parent.parent.parent == REPO / "bundles":
            continue  # written by download_large_files or tools.convert_checkpoint from the download
        producer = producer_of(command, path)
        if producer is None:
            missing.append(str(path.relative_to(REPO)))
        elif slow_reason(producer) is None:
            status, output, _ = run_quick(producer)
            if status != 0 or not path.exists():
                missing.append(f"{path.relative_to(REPO)} (the command at {producer.id} did not write it)")
    assert not missing, f"{command.id} ({reason}): missing inputs {missing} in\n{command.text}"
