"""``xmig examples``: the shipped scenarios, sweeps and broker recipe, from wherever xmig
is installed.

Xen ships its sample domain configurations (``tools/examples/``) beside the toolstack;
xmig does the same. In a checkout they are the top-level ``examples/`` folder; in an
installed wheel that folder travels as the package data ``migrate.examples``
(``setup.py``). ``xmig examples`` lists them with the first line of each file's own
description, and ``xmig examples copy [NAME...] [DIR]`` copies them out, keeping their
layout (a sweep's ``base: ../balloon.yaml`` still resolves), so that the commands of the
manual (``xmig run --guest examples/balloon.yaml``) work from any folder.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

#: Where ``copy`` puts the files when no DIR is given: the manual's paths then work as written.
DEFAULT_DIR = Path("examples")


@dataclass(frozen=True)
class Example:
    """One shipped example: its name on the command line, its files relative to the
    examples folder, and the one-line description its own text opens with."""

    name: str
    files: tuple[str, ...]
    description: str


def examples_root() -> Path:
    """The folder holding the shipped examples: the wheel's package data, or the
    checkout's top-level ``examples/`` for an editable install."""
    import migrate

    package = Path(migrate.__file__).resolve().parent
    for candidate in (package / "examples", package.parent / "examples"):
        if (candidate / "balloon.yaml").is_file():
            return candidate
    from migrate.errors import UsageError

    raise UsageError("the shipped examples are not installed with this xmig "
                     f"(looked in {package / 'examples'} and {package.parent / 'examples'})")


def _yaml_description(path: Path) -> str:
    """The file's opening comment paragraph, without its own name: ``# balloon.yaml - the
    canonical demo of the fix.`` gives ``the canonical demo of the fix.``"""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        words.append(text)
    first = " ".join(words)
    return first.split(" - ", 1)[1].strip() if " - " in first else first


def _readme_description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def catalogue(root: Optional[Path] = None) -> list[Example]:
    """Every shipped example, scenarios first, then sweeps, then the folders (each a
    recipe with its README)."""
    root = examples_root() if root is None else root
    found = [Example(p.stem, (p.name,), _yaml_description(p)) for p in sorted(root.glob("*.yaml"), key=lambda p: p.stem)]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if (sub / "README.md").is_file():
            files = tuple(f"{sub.name}/{f.name}" for f in sorted(sub.iterdir()) if f.is_file())
            found.append(Example(sub.name, files, _readme_description(sub / "README.md")))
        else:
            found += [Example(f"{sub.name}/{p.stem}", (f"{sub.name}/{p.name}",), _yaml_description(p))
                      for p in sorted(sub.glob("*.yaml"))]
    return found


def _lookup(word: str, examples: list[Example]) -> Optional[Example]:
    """An example by its name, its name with ``.yaml``, or (when only one has it) its
    last path part: ``balloon``, ``balloon.yaml``, ``balloon-deflate-sweep``."""
    name = word.removesuffix("/").removesuffix(".yaml").removeprefix("examples/")
    exact = [e for e in examples if e.name == name]
    if exact:
        return exact[0]
    by_tail = [e for e in examples if e.name.rsplit("/", 1)[-1] == name]
    return by_tail[0] if len(by_tail) == 1 else None


def _bases(example: Example, root: Path) -> list[str]:
    """The scenario files a sweep names as its ``base:``, so that a copied sweep runs."""
    extra = []
    for rel in example.files:
        if not rel.endswith(".yaml"):
            continue
        match = re.search(r"^base:\s*['\"]?([^'\"\s#]+\.ya?ml)", (root / rel).read_text(encoding="utf-8"), re.M)
        if match:
            base = (root / rel).parent / match.group(1)
            try:
                extra.append(base.resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                continue
    return [b for b in extra if (root / b).is_file()]


def plan_copy(words: list[str], examples: list[Example], root: Path) -> tuple[list[str], Path]:
    """The files to copy and the folder to copy them into, from ``[NAME...] [DIR]``: the
    last word is DIR unless it names an example; no NAME means every example."""
    from migrate.errors import UsageError

    words = list(words)
    target = DEFAULT_DIR
    if words and _lookup(words[-1], examples) is None:
        target = Path(words.pop())
    chosen = []
    for word in words:
        example = _lookup(word, examples)
        if example is None:
            known = ", ".join(e.name for e in examples)
            raise UsageError(f"examples copy: no example named {word!r} (one of: {known}; "
                             "the last argument may be the folder to copy into)")
        chosen.append(example)
    chosen = chosen or examples
    files: list[str] = []
    for example in chosen:
        for rel in (*example.files, *_bases(example, root)):
            if rel not in files:
                files.append(rel)
    return files, target


def copy_examples(files: list[str], root: Path, target: Path, *, force: bool) -> list[Path]:
    """Copy ``files`` (relative to ``root``) under ``target``; refuse, before copying
    anything, to replace a file that is there unless ``force``."""
    from migrate.errors import UsageError

    if target.exists() and not target.is_dir():
        raise UsageError(f"examples copy: {target} exists and is not a folder")
    there = [target / rel for rel in files if (target / rel).exists() or (target / rel).is_symlink()]
    not_files = [p for p in there if not p.is_file() or p.is_symlink()]
    if not_files:
        raise UsageError(f"examples copy: {not_files[0]} exists and is not a regular file; "
                         "move it away first")
    if there and not force:
        names = ", ".join(str(p) for p in there[:3]) + (f" and {len(there) - 3} more" if len(there) > 3 else "")
        raise UsageError(f"examples copy: {names} already exist{'s' if len(there) == 1 else ''}; "
                         "pass --force to replace, or name another folder")
    written = []
    try:
        for rel in files:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest)
            written.append(dest)
    except OSError as exc:
        raise UsageError(f"examples copy: cannot write {exc.filename or target}: {exc.strerror}") from None
    return written


def register(app: typer.Typer) -> None:
    """Add ``xmig examples`` (list) and ``xmig examples copy`` to the ``xmig`` app."""
    from migrate.cli.common import _guard

    group = typer.Typer(help="List the shipped example scenarios, sweeps and the broker recipe, "
                             "or copy them out (xmig examples copy [NAME...] [DIR]).",
                        invoke_without_command=True, no_args_is_help=False)

    @group.callback()
    @_guard
    def listing(ctx: typer.Context) -> None:
        """List the shipped examples: name and what each one teaches."""
        if ctx.invoked_subcommand is not None:
            return
        examples = catalogue()
        width = max(len(e.name) for e in examples)
        typer.echo(f"Shipped examples ({examples_root()}):")
        for e in examples:
            typer.echo(f"  {e.name:<{width}}  {e.description}")
        typer.echo("\nCopy them out with: xmig examples copy [NAME...] [DIR]   (DIR: ./examples by default)\n"
                   "then, for instance:  xmig run --guest examples/balloon.yaml")

    @group.command(short_help="Copy shipped examples into a folder (./examples by default).")
    @_guard
    def copy(
        words: Optional[list[str]] = typer.Argument(
            None, metavar="NAME... DIR",
            help="Examples to copy (all when none is named), then the folder to copy into "
                 "(./examples when the last word names an example)."),
        force: bool = typer.Option(False, "--force", help="Replace files that are already there."),
    ) -> None:
        """Copy shipped examples out, keeping their layout: a sweep comes with the scenario
        it names as its base, and `mosquitto` is the whole broker recipe. Nothing is
        replaced without --force.

        Example: xmig examples copy balloon webserver ./scenarios"""
        root = examples_root()
        files, target = plan_copy(list(words or []), catalogue(root), root)
        for dest in copy_examples(files, root, target, force=force):
            typer.echo(f"wrote {dest}")

    app.add_typer(group, name="examples")
