"""Sweep files: a base scenario and the axes a parameter study moves it along.

A sweep file is YAML, validated by the pydantic models below (which also generate the
JSON Schema shipped as ``migrate/sweep/sweep.schema.json``; ``python -m
migrate.sweep.spec`` rewrites it)::

    name: deflate-timing
    base: balloon.yaml                 # relative to this file, or an inline scenario mapping
    axes:                              # the product of all axes is run
      guest.balloon.schedule[1].at: {from: 5s, to: 12s, step: 0.25s}
      migration.xen_behaviour: [fixed, pre-fix]
      seed: {range: [1, 50]}           # 1..50 inclusive
    zip:                               # each group moves together, as one axis
      - migration.policy: [xen, downtime]
        migration.policy_params.max_iterations: [5, 10]

An axis is a scenario field by dotted path, with ``[i]`` for a list entry. Values are
a list, a ``{from, to, step}`` range (numbers, or quantities in one unit: ``5s``,
``256MiB``; the unit is kept, so the scenario parses them as it would in a scenario
file), or an integer ``{range: [first, last]}`` / ``{range: [first, last, step]}``.

Every value of every axis is checked on its own against the base scenario through
``migrate.run.scenario`` (the one definition of the scenario rules) and, for policies,
the policy check of ``xmig run``: a value that is wrong by itself is a ``SweepError``
naming the file, the axis and the value. A combination that is wrong only together
(say a balloon target past a ``maxmem`` another axis lowered) is left to the run, which
records it as a row with its error.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from guest.inputs import InputError, read_input

from migrate.run.scenario import (MAX_DEPTH, MAX_FILE_BYTES, Scenario, ScenarioError, _check_shape, _describe, _format_path,
                        _Loader, parse_scenario, scenario_json_schema)

__all__ = ["SweepFile", "SweepError", "SweepPlan", "Axis", "Point", "Ticker", "load_sweep", "sweep_json_schema",
           "SCHEMA_PATH", "apply_values", "parse_axis_path"]

SCHEMA_PATH = Path(__file__).with_name("sweep.schema.json")

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
AXIS_PATH_RE = re.compile(rf"^{_NAME}(\[[0-9]+\])*(\.{_NAME}(\[[0-9]+\])*)*$")
_QTY_RE = re.compile(r"^\s*(?P<sign>[+-]?)(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)\s*(?P<unit>[A-Za-z/%µμ]*)\s*$")
MAX_RUNS = 1_000_000


class SweepError(ValueError):
    """A sweep file is unusable: one line naming the file, the axis (when there is one)
    and the value."""


class Ticker:
    """Say how planning goes (``say(text)``) at most every ``every`` seconds, and not at
    all for a sweep planned faster than that: a million-run sweep takes a while to
    check, expand and match against earlier results, and should not look hung."""

    def __init__(self, say=None, every: float = 2.0):
        import time

        self._say, self._every, self._clock = say, every, time.monotonic
        self._last = self._clock()

    def __call__(self, text) -> None:
        if self._say is None:
            return
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self._say(text() if callable(text) else text)


# ---------------------------------------------------------------------------- models

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Quantity = Annotated[Union[int, float, str], WithJsonSchema(
    {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _QTY_RE.pattern}],
     "description": "a number, or a quantity with a unit such as 5s, 250ms or 256MiB"})]


class StepRange(_Model):
    """``{from: 5s, to: 12s, step: 0.25s}``: from ``from`` to ``to`` inclusive (when a
    whole number of steps lands on it), all three in one unit."""

    from_: Quantity = Field(alias="from")
    to: Quantity
    step: Quantity


class IntRange(_Model):
    """``{range: [1, 50]}``: the integers 1 to 50 inclusive; a third number is the step."""

    range: list[int] = Field(min_length=2, max_length=3)


AxisValues = Union[list[Any], StepRange, IntRange]


class SweepFile(_Model):
    """A whole sweep file."""

    name: str = "sweep"
    description: str = ""
    base: Union[str, dict[str, Any]] = Field(
        description="The base scenario: a path relative to the sweep file, or an inline scenario mapping.")
    axes: dict[str, AxisValues] = Field(default_factory=dict,
                                        description="Scenario field (dotted path, [i] for a list entry) -> values; "
                                                    "the sweep runs their product.")
    zip: list[dict[str, AxisValues]] = Field(default_factory=list,
                                             description="Groups of axes that move together (equal lengths); "
                                                         "each group is one factor of the product.")


# ---------------------------------------------------------------------------- plan

@dataclass(frozen=True, slots=True)
class Axis:
    """One axis: its path, the values handed to the scenario, and the values stored in
    the results (the number without its unit for a range; the value itself otherwise)."""

    path: str
    values: tuple[Any, ...]          # as the scenario receives them ("5.25s")
    columns: tuple[Any, ...]         # as the results store them (5.25)
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Point:
    """One run of the sweep: its place in the canonical order and its axis values."""

    index: int
    values: tuple[Any, ...]          # per axis, as the scenario receives them
    columns: tuple[Any, ...]         # per axis, as the results store them

    def key(self) -> str:
        return run_key(self.columns)


def run_key(columns) -> str:
    """A run's identity: its axis values (the seed is an axis or fixed by the base)."""
    return json.dumps([_canon(c) for c in columns], separators=(",", ":"))


def _canon(v: Any) -> Any:
    # 5 and 5.0 are the same run (a CSV read back gives 5 for 5.0's column if integral).
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@dataclass(slots=True)
class SweepPlan:
    """A loaded sweep: the file, the base scenario data, its axes (zip groups inline, in
    file order) and the factors of the product (each a list of axis indices)."""

    file: str
    name: str
    base: dict[str, Any]
    base_source: str                  # what scenario errors and trace paths are relative to
    axes: list[Axis]
    factors: list[list[int]]

    @property
    def axis_names(self) -> list[str]:
        return [a.path for a in self.axes]

    @property
    def base_digest(self) -> str:
        """What every row depends on besides its axis values: the base scenario, as data.
        Stored with the results so that ``--resume`` never mixes two sweeps' rows."""
        import hashlib
        import json

        text = json.dumps(self.base, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def units(self) -> dict[str, str]:
        return {a.path: a.unit for a in self.axes if a.unit}

    def __len__(self) -> int:
        n = 1
        for f in self.factors:
            n *= len(self.axes[f[0]].values)
        return n

    def points(self, tick: Ticker | None = None) -> list[Point]:
        """Every run, in the canonical order: the product of the factors, the first
        factor slowest, as the file lists them."""
        out: list[Point] = []
        ranges = [range(len(self.axes[f[0]].values)) for f in self.factors]
        total = len(self)
        for index, combo in enumerate(itertools.product(*ranges)):
            if tick is not None and not index & 0xFFFF:
                tick(f"listing {total:,} runs: {index:,} done")
            vals: list[Any] = [None] * len(self.axes)
            cols: list[Any] = [None] * len(self.axes)
            for f, i in zip(self.factors, combo):
                for a in f:
                    vals[a] = self.axes[a].values[i]
                    cols[a] = self.axes[a].columns[i]
            out.append(Point(index, tuple(vals), tuple(cols)))
        return out

    def scenario_data(self, values) -> dict[str, Any]:
        return apply_values(self.base, [(a.path, v) for a, v in zip(self.axes, values)])


# ---------------------------------------------------------------------------- paths

def parse_axis_path(path: str) -> list[str | int]:
    """``guest.balloon.schedule[1].at`` -> ``['guest', 'balloon', 'schedule', 1, 'at']``."""
    out: list[str | int] = []
    for part in path.split("."):
        name, *idx = part.split("[")
        out.append(name)
        out.extend(int(i.rstrip("]")) for i in idx)
    return out


def apply_values(base: dict[str, Any], assignments) -> dict[str, Any]:
    """A copy of ``base`` with each ``(path, value)`` set. Missing mappings on the way
    are created (``migration.policy_params.max_iterations`` on a base without
    ``policy_params``); a list index must exist in the base (``SweepError`` otherwise)."""
    data = copy.deepcopy(base)
    for path, value in assignments:
        tokens = parse_axis_path(path)
        node: Any = data
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            where = _format_path(tuple(tokens[:i]))
            if isinstance(tok, int):
                if not isinstance(node, list):
                    raise SweepError(f"{where} is {_describe(node)} in the base scenario, not a list")
                if tok >= len(node):
                    raise SweepError(f"{where} has {len(node)} entries in the base scenario, so [{tok}] "
                                     "does not exist")
                if last:
                    node[tok] = value
                else:
                    node = node[tok]
                continue
            if not isinstance(node, dict):
                raise SweepError(f"{where} is {_describe(node)} in the base scenario, not a mapping")
            if last:
                node[tok] = value
            else:
                if node.get(tok) is None:
                    node[tok] = [] if isinstance(tokens[i + 1], int) else {}
                node = node[tok]
    return data


# ---------------------------------------------------------------------------- values

def _quantity(v: Any) -> tuple[Decimal, str] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return Decimal(v), ""
    if isinstance(v, float):
        return Decimal(repr(v)), ""
    if isinstance(v, str):
        m = _QTY_RE.match(v)
        if m:
            try:
                num = Decimal(m.group("num"))
            except InvalidOperation:
                return None
            return (-num if m.group("sign") == "-" else num), m.group("unit")
    return None


def _expand(axis: str, spec: Any, where: str) -> Axis:
    if isinstance(spec, list):
        if not spec:
            raise SweepError(f"{where}: expected at least one value, found an empty list")
        cols = tuple(_column(v) for v in spec)
        if len(set(run_key([c]) for c in cols)) != len(cols):
            raise SweepError(f"{where}: expected distinct values, found a repeated one in {spec!r}")
        return Axis(axis, tuple(spec), cols)
    if isinstance(spec, IntRange):
        first, last, *rest = spec.range
        step = rest[0] if rest else 1
        if step <= 0 or last < first:
            raise SweepError(f"{where}: expected range [first, last] or [first, last, step] with "
                             f"first <= last and step > 0, found {spec.range}")
        count = (last - first) // step + 1
        if count > MAX_RUNS:
            raise SweepError(f"{where}: {count:,} values is more than a sweep can run ({MAX_RUNS:,})")
        vals = tuple(range(first, last + 1, step))
        return Axis(axis, vals, vals)
    parts = {}
    for key in ("from", "to", "step"):
        raw = getattr(spec, "from_" if key == "from" else key)
        q = _quantity(raw)
        if q is None:
            raise SweepError(f"{where}.{key}: expected a number or a quantity like 5s or 256MiB, found {raw!r}")
        parts[key] = q
    units = {u for _, u in parts.values()}
    if len(units) != 1:
        raise SweepError(f"{where}: expected from, to and step in one unit, found "
                         f"{', '.join(repr(getattr(spec, 'from_' if k == 'from' else k)) for k in parts)}")
    unit = units.pop()
    lo, hi, step = (parts[k][0] for k in ("from", "to", "step"))
    if step <= 0 or hi < lo:
        raise SweepError(f"{where}: expected from <= to and a positive step, found "
                         f"from {spec.from_!r}, to {spec.to!r}, step {spec.step!r}")
    count = int((hi - lo) / step) + 1
    if count > MAX_RUNS:
        raise SweepError(f"{where}: {count} values is more than a sweep can run ({MAX_RUNS})")
    nums = [lo + step * i for i in range(count)]
    integral = all(n == n.to_integral_value() for n in nums)
    cols = tuple(int(n) if integral else float(n) for n in nums)
    plus = any(isinstance(getattr(spec, k), str) and getattr(spec, k).lstrip().startswith("+")
               for k in ("from_", "to"))
    if unit:
        vals = tuple(f"{'+' if plus and n >= 0 else ''}{_plain(n)}{unit}" for n in nums)
    else:
        vals = cols
    return Axis(axis, vals, cols, unit)


def _plain(n: Decimal) -> str:
    text = format(n.normalize(), "f")
    return text


def _column(v: Any) -> Any:
    """How a listed value is stored in the results: scalars as they are, anything else
    (a mapping, a list) as compact JSON."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------- loading

def _model_error(file: str, e: ValidationError) -> SweepError:
    err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
    path = _format_path(tuple(x for x in err["loc"] if x not in ("list[any]", "StepRange", "IntRange")))
    if err["type"] == "extra_forbidden":
        return SweepError(f"{file}: {path}: unknown key (expected one of the keys name, description, base, "
                          "axes, zip; an axis takes a list, {from, to, step} or {range: [first, last]})")
    if err["type"] == "missing":
        return SweepError(f"{file}: {path}: expected a value (this field is required), found nothing")
    return SweepError(f"{file}: {path}: {err['msg'].lower()}, found {_describe(err.get('input'))}")


def _yaml(text: str, file: str) -> Any:
    """Parse YAML with the scenario loader's limits: an alias bomb, a self-reference or
    deep nesting is measured on the node graph and refused before it is expanded."""
    try:
        _check_shape(yaml.compose(text, Loader=_Loader), file)
        return yaml.load(text, Loader=_Loader)
    except ScenarioError as e:
        raise SweepError(e.message) from None
    except RecursionError:
        raise SweepError(f"{file}: expected YAML nested at most {MAX_DEPTH} levels deep, found deeper nesting") from None
    except ValueError as e:    # e.g. an integer past Python's digit limit
        raise SweepError(f"{file}: expected valid YAML values, found {str(e)[:80]}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
        raise SweepError(f"{file}: expected valid YAML, found {problem}{where}") from None


def load_sweep(path: str | Path, *, allowed: frozenset[str] = frozenset(), tick: Ticker | None = None) -> SweepPlan:
    """Read, validate and expand a sweep file (``SweepError`` on any problem).
    ``allowed``: the user policies enabled (``--allow-policy``), as for ``xmig run``;
    ``tick`` hears how the checking of a long axis goes."""
    file = str(path)
    try:
        text = read_input(path, MAX_FILE_BYTES, "sweep file")
    except InputError as e:
        raise SweepError(f"{file}: expected {e.expected}, found {e.found}") from None
    except FileNotFoundError:
        raise SweepError(f"{file}: expected a sweep file, found no such file") from None
    except IsADirectoryError:
        raise SweepError(f"{file}: expected a sweep file, found a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"{file}: expected a readable UTF-8 sweep file, found {e}") from None
    data = _yaml(text, file)
    if not isinstance(data, dict):
        raise SweepError(f"{file}: expected a mapping with base: and axes:, found {_describe(data)}")
    if "guest" in data and "base" not in data:
        raise SweepError(f"{file}: expected a sweep file (base: and axes:), found a scenario file; "
                         "name it as the base: of a sweep file")
    try:
        model = SweepFile.model_validate(data)
    except ValidationError as e:
        raise _model_error(file, e) from None
    return plan_sweep(model, file, data, allowed=allowed, tick=tick)


def plan_sweep(model: SweepFile, file: str, raw: dict | None = None, *, allowed: frozenset[str] = frozenset(),
               tick: Ticker | None = None) -> SweepPlan:
    here = Path(file).parent
    if isinstance(model.base, str):
        base_path = Path(model.base)
        base_path = base_path if base_path.is_absolute() else here / base_path
        try:
            base_text = read_input(base_path, MAX_FILE_BYTES, "scenario file")
        except InputError as e:
            raise SweepError(f"{file}: base: expected {e.expected}, found {e.found} ({model.base!r})") from None
        except FileNotFoundError:
            raise SweepError(f"{file}: base: expected a scenario file (relative to the sweep file), "
                             f"found no such file {model.base!r}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SweepError(f"{file}: base: expected a readable scenario file, found {e}".replace("\n", " ")) from None
        base = _yaml(base_text, str(base_path))
        base_source = str(base_path)
    else:
        base = model.base
        base_source = file
    if not isinstance(base, dict):
        # described, never quoted: base: may point at the wrong file (a password file)
        raise SweepError(f"{base_source}: expected a scenario mapping with a guest: section, found "
                         f"{_shape_of(base)} (base: of {file})")
    if "name" not in base:
        base = {"name": model.name if not isinstance(model.base, str) else Path(base_source).stem, **base}
    _check_scenario(file, base, base_source, None, None, allowed)

    axes: list[Axis] = []
    factors: list[list[int]] = []
    seen: dict[str, str] = {}
    for name, spec in model.axes.items():
        axes.append(_checked_axis(file, name, spec, f"axes.{name}", seen))
        factors.append([len(axes) - 1])
    for g, group in enumerate(model.zip):
        if not group:
            raise SweepError(f"{file}: zip[{g}]: expected a mapping of two or more axes, found an empty one")
        members = []
        for name, spec in group.items():
            axes.append(_checked_axis(file, name, spec, f"zip[{g}].{name}", seen))
            members.append(len(axes) - 1)
        lengths = {axes[m].path: len(axes[m].values) for m in members}
        if len(set(lengths.values())) != 1:
            raise SweepError(f"{file}: zip[{g}]: expected axes of one length, found "
                             + ", ".join(f"{k}: {v}" for k, v in lengths.items()))
        factors.append(members)
    plan = SweepPlan(file=file, name=model.name, base=base, base_source=base_source, axes=axes,
                     factors=factors)
    if len(plan) > MAX_RUNS:
        raise SweepError(f"{file}: axes: {len(plan):,} runs is more than a sweep can run ({MAX_RUNS:,})")
    count, checked = sum(len(a.values) for a in axes), 0
    for a in axes:
        for v in a.values:
            _check_scenario(file, apply_or_fail(file, a, base, v), base_source, a.path, v, allowed)
            checked += 1
            if tick is not None:
                tick(lambda: f"checking {count:,} axis values: {checked:,} done")
    return plan


def apply_or_fail(file: str, axis: Axis, base: dict, value: Any) -> dict:
    try:
        return apply_values(base, [(axis.path, value)])
    except SweepError as e:
        raise SweepError(f"{file}: axis {axis.path}: {e}") from None


def _checked_axis(file: str, name: str, spec: Any, where: str, seen: dict[str, str]) -> Axis:
    if not AXIS_PATH_RE.match(name):
        raise SweepError(f"{file}: {where}: expected a scenario field as a dotted path such as "
                         f"guest.balloon.schedule[1].at, found {name!r}")
    if name in seen:
        raise SweepError(f"{file}: {where}: axis {name} is already swept by {seen[name]}")
    top = parse_axis_path(name)[0]
    if top not in Scenario.model_fields:
        raise SweepError(f"{file}: {where}: expected a path starting with one of "
                         f"{', '.join(Scenario.model_fields)}, found {name!r}")
    seen[name] = where
    return _expand(name, spec, f"{file}: {where}")


def _check_scenario(file: str, data: dict, source: str, axis: str | None, value: Any,
                    allowed: frozenset[str] = frozenset()) -> None:
    """Validate ``data`` as a scenario (the scenario loader's rules, and the policy's).
    With ``axis``, an error names the sweep file, the axis and the value."""
    prefix = f"{file}: axis {axis} = {_show(value)}: " if axis else ""
    try:
        scenario = parse_scenario(data, source)
    except ScenarioError as e:
        if not axis:
            raise SweepError(str(e)) from None
        msg = e.message
        if e.file and msg.startswith(f"{e.file}: "):
            msg = msg[len(e.file) + 2:]
        raise SweepError(prefix + msg) from None
    # The policy as ``xmig run`` checks it (one rule for which policies a scenario may name).
    from migrate.errors import UsageError
    from migrate.run.scenario import check_scenario_policy

    try:
        check_scenario_policy(scenario, Path(source), None, allowed)
    except UsageError as e:
        msg = str(e)
        if axis and msg.startswith(f"{source}: "):
            msg = prefix + msg[len(source) + 2:]
        raise SweepError(msg) from None


def _shape_of(value: Any) -> str:
    """What a parsed file holds, without its contents."""
    if value is None:
        return "an empty file"
    if isinstance(value, str):
        return f"one line of text ({len(value)} characters)" if "\n" not in value else "plain text"
    if isinstance(value, list):
        return f"a list of {len(value)} entries"
    return f"a {type(value).__name__}"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


# ---------------------------------------------------------------------------- schema

def sweep_json_schema() -> dict:
    """The JSON Schema of sweep files; an inline ``base`` is checked against the
    scenario schema (embedded under ``$defs``)."""
    schema = SweepFile.model_json_schema(by_alias=True)
    scen = scenario_json_schema()
    defs = dict(schema.get("$defs", {}))
    defs.update(scen.get("$defs", {}))
    defs["Scenario"] = {k: v for k, v in scen.items() if k not in ("$defs", "$schema")}
    schema["$defs"] = defs
    base = dict(schema["properties"]["base"])
    base["anyOf"] = [{"type": "string"}, {"$ref": "#/$defs/Scenario"}]
    schema["properties"]["base"] = base
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def write_json_schema(path: str | Path = SCHEMA_PATH) -> None:
    Path(path).write_text(json.dumps(sweep_json_schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_json_schema()
    print(f"wrote {SCHEMA_PATH}")
