"""Scenario files: the YAML that ``xmig run --guest FILE`` reads.

A scenario is a guest (``guest.config.GuestConfig``), a link and a migration::

    name: balloon            # default: the file's stem
    seed: 1
    guest:   {memory: 1GiB, workloads: [...], balloon: {...}}
    link:    {bandwidth: 1Gbit/s, latency: 1ms}
    migration: {start: 1s, policy: xen, xen_behaviour: pre-fix}

Only ``guest.memory`` is required. One set of pydantic models defines the format; it
validates files (``load_scenario``, ``parse_scenario``) and generates the JSON Schema
shipped as ``migrate/run/scenario.schema.json`` (``python -m migrate.run.scenario`` rewrites
it). Every problem is a ``ScenarioError`` naming the file, the field path
(``guest.workloads[1].rate``), what was expected and what was found, in one line::

    examples/x.yaml: guest.workloads[1].rate: expected a rate like 20MiB/s or 5000pages/s, found 'fast'
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guest.config import WORKLOAD_KINDS, GuestConfig, TraceWorkload, field_error
from guest.inputs import InputError, read_input
from hypervisor.abi import FIX_SITES

from guest.units import Bandwidth, Duration, Rate
from migrate.errors import UsageError

__all__ = ["Scenario", "LinkConfig", "CheckpointConfig", "MigrationConfig", "ScenarioError", "load_scenario",
           "parse_scenario", "scenario_json_schema", "SCHEMA_PATH"]

SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")

#: Limits on what a scenario file may ask of the loader, checked before anything is
#: built: the file's size, its YAML nodes once aliases are expanded, how deep they nest,
#: and the guest ticks before the migration starts.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_TICKS = 2_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkConfig(_Model):
    """The link model between source and destination, and the toolstack's fixed costs.

    ``bandwidth`` in bytes/s (``1Gbit/s``); ``latency`` one way; ``batch_overhead`` per
    batch of up to 1024 PFNs; ``hypercall_overhead`` per domctl; ``clean_rate`` how many
    PFNs a CLEAN/PEEK walks per second (default 1 Gi PFNs/s: copying the bitmap out
    and zeroing leaves, about 1 ms per 4 GiB of guest), which sets how long the domain
    stays paused for the walk; ``restore_rate`` caps how fast the
    destination takes pages in (pages/s), unset for no cap.
    """

    bandwidth: Bandwidth = 125_000_000.0
    latency: Duration = 0.001
    batch_overhead: Duration = 50e-6
    hypercall_overhead: Duration = 5e-6
    clean_rate: Rate = float(1 << 30)
    restore_rate: Rate | None = None

    @model_validator(mode="after")
    def _positive_rates(self) -> "LinkConfig":
        # A walk or a restore at 0 pages/s never ends: the rate must be above zero.
        for name in ("clean_rate", "restore_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise field_error(name, "a rate above zero like 1Gpages/s or 100MiB/s", value)
        return self


class CheckpointConfig(_Model):
    """A checkpointed (Remus) stream (xg_sr_save.c, docs/checkpoint.md): the primary is
    paused ``interval`` after each commit to send what it dirtied; at ``failover`` the
    backup takes over from its last committed checkpoint, which the verify checks."""

    interval: Duration
    failover: Duration

    @model_validator(mode="after")
    def _positive_interval(self) -> "CheckpointConfig":
        if not self.interval > 0:
            raise field_error("interval", "a duration above zero like 200ms", self.interval)
        return self


class MigrationConfig(_Model):
    """When and how the toolstack migrates the guest.

    ``policy`` names a precopy policy (``xen`` is xg_sr_save's: stop below 50 dirty
    pages or after 5 iterations) and ``policy_params`` its knobs (``max_iterations``,
    ``dirty_threshold``, ``downtime_limit``...), checked by the policy. ``xen_behaviour``
    switches the P2M/log-dirty fix: ``fixed`` or ``pre-fix`` at every call site, or a
    mapping of each of the patch's four call sites (``p2m_remove_page``,
    ``set_typed_p2m_entry``, ``pod_decrease_reservation``, ``guest_physmap_add_entry``)
    to ``fixed`` or ``pre-fix``, to turn the fix on one site at a time. ``verify`` adds the VERIFY pass; ``tolerate_vanished``
    opts in to skipping a GFN removed between the type query and the map instead of
    failing the save; ``deadline`` caps the migration's virtual duration (the save is
    aborted and the source resumes, as a management layer's timeout would do);
    ``stats_overflow`` is how the saver's 32-bit initial ``dirty_count`` holds
    ``p2m_size``: ``truncate`` as Xen does (2^32 reads as 0 and pass 1 is skipped) or
    ``saturate`` (v2 03/13, never committed). ``switchover`` is what happens when the
    policy says stop: ``live`` as Xen does (the last dirty set is still sent live, then
    only what was dirtied meanwhile is sent with the guest suspended) or ``stopped`` as
    QEMU and SimGrid do (suspend first, then send the pending set). ``engine`` is how
    the saver's batches are computed, not what they are: ``span`` (the default) serves a
    run of batches between two guest hypercalls at once, ``reference`` makes the two
    calls of every batch one by one, as ``write_batch`` does; both give the same stream
    and the same report (the reference is what tests hold the span engine to).
    ``checkpoint`` (``{interval: 200ms, failover: 12s}``) makes it a Remus replication.
    """

    start: Duration = 1.0
    policy: str = "xen"
    policy_params: dict[str, Any] = Field(default_factory=dict)
    xen_behaviour: Union[Literal["fixed", "pre-fix"], dict[str, Literal["fixed", "pre-fix"]]] = "fixed"
    verify: bool = False
    tolerate_vanished: bool = False
    deadline: Duration | None = None
    stats_overflow: Literal["truncate", "saturate"] = "truncate"
    switchover: Literal["live", "stopped"] = "live"
    engine: Literal["span", "reference"] = "span"
    checkpoint: CheckpointConfig | None = None

    @field_validator("xen_behaviour", mode="before")
    @classmethod
    def _check_sites(cls, v: Any) -> Any:
        both = "'fixed' or 'pre-fix'"
        if isinstance(v, dict):
            for key, val in v.items():
                if key not in FIX_SITES:
                    close = difflib.get_close_matches(str(key), FIX_SITES, n=1, cutoff=0.5)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise field_error(str(key), "a call site of the fix, one of " + ", ".join(FIX_SITES),
                                      f"{key!r}{hint}")
                if val not in ("fixed", "pre-fix"):
                    raise field_error(str(key), both, _describe(val))
            missing = [s for s in FIX_SITES if s not in v]
            if missing:
                raise field_error("", "a behaviour for every call site of the fix",
                                  "none for " + ", ".join(missing))
        elif v not in ("fixed", "pre-fix"):
            close = difflib.get_close_matches(str(v), ["fixed", "pre-fix"], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close and isinstance(v, str) else ""
            raise field_error("", f"{both}, or a mapping of call site to {both}", f"{_describe(v)}{hint}")
        return v


class Scenario(_Model):
    """A whole scenario file."""

    name: str = "scenario"
    description: str = ""
    seed: int = Field(1, ge=0, le=(1 << 63) - 1, strict=True)   # strict: `seed: true` is not 1
    guest: GuestConfig
    link: LinkConfig = Field(default_factory=LinkConfig)
    migration: MigrationConfig = Field(default_factory=MigrationConfig)

    @model_validator(mode="after")
    def _bounded_span(self) -> "Scenario":
        # The guest runs tick by tick until the migration starts (and until a deadline):
        # past MAX_TICKS steps a run would take hours without showing anything more.
        for name, value in (("start", self.migration.start), ("deadline", self.migration.deadline)):
            if value is not None and value / self.guest.tick > MAX_TICKS:
                raise field_error(f"migration.{name}",
                                  f"at most {MAX_TICKS:,} guest ticks ({MAX_TICKS * self.guest.tick:g}s with "
                                  f"guest.tick {self.guest.tick:g}s)", f"{value:g}s")
        ckpt = self.migration.checkpoint
        if ckpt is not None:
            if not self.migration.start < ckpt.failover <= MAX_TICKS * self.guest.tick:
                raise field_error("migration.checkpoint.failover", f"a time after migration.start "
                                  f"({self.migration.start:g}s), at most {MAX_TICKS:,} guest ticks", f"{ckpt.failover:g}s")
            if self.migration.deadline is not None:
                raise field_error("migration.deadline", "no deadline with migration.checkpoint (a replication "
                                  "runs until its failover)", f"{self.migration.deadline:g}s")
        return self


# ---------------------------------------------------------------------------- errors

class ScenarioError(ValueError):
    """A scenario file is unusable. ``file`` (as given), ``path`` (``guest.memory``,
    empty for whole-file problems), ``expected`` and ``found`` say why; ``suggestion``
    is a did-you-mean for an unknown key or kind; ``line`` is the 1-based YAML line when
    known; ``others`` holds further errors in the same file."""

    def __init__(self, file: str | None, path: str, expected: str, found: str, *,
                 suggestion: str | None = None, line: int | None = None, unknown_key: bool = False):
        self.file = file
        self.path = path
        self.expected = expected
        self.found = found
        self.suggestion = suggestion
        self.line = line
        self.unknown_key = unknown_key
        self.others: list[ScenarioError] = []
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = "".join(f"{p}: " for p in (self.file, self.path) if p)
        if self.unknown_key:
            hint = f"; did you mean '{self.suggestion}'?" if self.suggestion else ""
            return f"{where}unknown key {self.found}{hint} (expected {self.expected})"
        hint = f" (did you mean '{self.suggestion}'?)" if self.suggestion else ""
        return f"{where}expected {self.expected}, found {self.found}{hint}"

    def __str__(self) -> str:
        return self.message


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."      # an excerpt, never a whole value


def _format_path(loc: tuple) -> str:
    out = ""
    for el in loc:
        if isinstance(el, int):
            out += f"[{el}]"
        else:
            out += ("." if out else "") + str(el)
    return out


def _strip(tp: Any) -> Any:
    """Drop Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, getattr(__import__("types"), "UnionType", Union)):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
            else:
                return tp
        else:
            return tp


def _union_member(tp: Any, kind: Any) -> Any:
    for m in typing.get_args(tp):
        if isinstance(m, type) and issubclass(m, BaseModel):
            f = m.model_fields.get("kind")
            if f is not None and kind in typing.get_args(f.annotation):
                return m
    return None


def _walk(loc: tuple, data: Any) -> tuple[tuple, Any, Any]:
    """Follow pydantic's ``loc`` through the models and the raw data: returns the
    user-facing path (union tags removed), the model class and the raw value there."""
    tp: Any = Scenario
    path: list = []
    for el in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if isinstance(el, str) and el in tp.model_fields:
                tp = tp.model_fields[el].annotation
                data = data.get(el) if isinstance(data, dict) else None
                path.append(el)
                continue
            return tuple(path) + tuple(loc[len(path):]), None, None
        origin = typing.get_origin(tp)
        if origin is list and isinstance(el, int):
            tp = typing.get_args(tp)[0]
            data = data[el] if isinstance(data, list) and el < len(data) else None
            path.append(el)
            continue
        if origin is dict:
            tp = typing.get_args(tp)[1]
            data = data.get(el) if isinstance(data, dict) else None
            path.append(el)
            continue
        if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
            member = _union_member(tp, el)
            if member is not None:         # a discriminated-union tag: not part of the path
                tp = member
                continue
        path.append(el)
        tp = Any
    return tuple(path), _strip(tp), data


_TYPE_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "list_type": "a list",
}


def _home_of(key: str, ppath: tuple) -> list[str]:
    """Where an unknown key of a top-level section belongs when another section has it
    (``migration.write_timing`` -> ``guest.write_timing``)."""
    if len(ppath) != 1:
        return []
    for name, info in Scenario.model_fields.items():
        model = info.annotation
        if name != ppath[0] and isinstance(model, type) and issubclass(model, BaseModel) \
                and key in model.model_fields:
            return [f"{name}.{key}"]
    return []


def _convert(err: dict, data: Any, file: str | None, lines: dict) -> ScenarioError:
    etype = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    found_value = err.get("input")
    suggestion = None
    if etype == "extra_forbidden":
        ppath, model, _ = _walk(loc[:-1], data)
        key = loc[-1]
        fields = sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6) or _home_of(str(key), ppath)
        where = _format_path(ppath) or "the top level"
        return ScenarioError(file, _format_path(ppath + (key,)), f"one of the keys of {where}: {', '.join(fields)}",
                             repr(key), suggestion=close[0] if close else None, unknown_key=True,
                             line=lines.get(ppath + (key,)))
    ppath, _, _ = _walk(loc, data)
    if etype in ("xmig_unit", "xmig_field"):
        expected, found = ctx["expected"], ctx["found"]
        found = found if etype == "xmig_field" and isinstance(found, str) else _describe(found)
        if etype == "xmig_field" and ctx.get("at"):
            sub = ctx["at"]
            path = _format_path(ppath) + ("." if ppath else "") + sub
            return ScenarioError(file, path, expected, found, line=lines.get(_parse_path(path)))
    elif etype == "missing":
        expected, found = "a value (this field is required)", "nothing"
    elif etype == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        expected = "a workload kind, one of " + ", ".join(tags)
        found = repr(ctx.get("tag"))
        close = difflib.get_close_matches(str(ctx.get("tag")), tags, n=1, cutoff=0.5)
        suggestion = close[0] if close else None
        ppath = ppath + ("kind",)
    elif etype == "union_tag_not_found":
        expected = "a kind: key (one of " + ", ".join(WORKLOAD_KINDS) + ")"
        found = "none"
        ppath = ppath + ("kind",)
    elif etype == "literal_error":
        expected = "one of " + str(ctx.get("expected", ""))
        found = _describe(found_value)
        options = [o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
        by_case = {o.lower(): o for o in options if o}
        close = ([by_case[found_value.lower()]] if isinstance(found_value, str) and found_value.lower() in by_case
                 else difflib.get_close_matches(str(found_value), [o for o in options if o], n=1, cutoff=0.5))
        suggestion = close[0] if close and isinstance(found_value, str) else None
    elif etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": ("above", "gt"), "greater_than_equal": ("at least", "ge"),
                 "less_than": ("below", "lt"), "less_than_equal": ("at most", "le")}[etype]
        expected = f"a number {bound[0]} {ctx.get(bound[1])}"
        found = _describe(found_value)
    elif etype in _TYPE_EXPECTED:
        expected = _TYPE_EXPECTED[etype]
        found = _describe(found_value)
    else:
        expected = err.get("msg", etype)
        found = _describe(found_value)
    return ScenarioError(file, _format_path(ppath), expected, found, suggestion=suggestion,
                         line=lines.get(ppath))


def _parse_path(path: str) -> tuple:
    out: list = []
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


# ---------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_index(text: str) -> dict:
    """Map data paths (tuples) to 1-based lines of their YAML nodes."""
    out: dict = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def visit(node, path):
        if node is None:
            return
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    out[path + (k.value,)] = k.start_mark.line + 1
                    visit(v, path + (k.value,))
                    out[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                visit(v, path + (i,))

    visit(root, ())
    return out


# ---------------------------------------------------------------------------- limits

def _check_shape(root, file: str | None) -> None:
    """Refuse YAML whose aliases expand past MAX_NODES nodes (a "billion laughs"), that
    refers to itself, or nests deeper than MAX_DEPTH: counted on the node graph, so
    a bomb is measured without being expanded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ScenarioError(file, "", f"YAML nested at most {MAX_DEPTH} levels deep", "deeper nesting")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ScenarioError(file, "", "YAML without self-referencing aliases", "an alias inside itself")
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(v, depth + 1) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        active.discard(key)
        if n > MAX_NODES:
            raise ScenarioError(file, "", f"at most {MAX_NODES:,} YAML values once aliases are expanded",
                                f"more than {MAX_NODES:,}")
        sizes[key] = n
        return n

    if root is not None:
        size(root, 0)


# ---------------------------------------------------------------------------- loading

def parse_scenario(data: Any, source: str | Path | None = None, *, _text: str | None = None) -> Scenario:
    """Validate already-parsed data (a dict as from YAML/JSON). ``source`` names it in
    errors and resolves relative trace paths; a missing ``name`` becomes its stem."""
    file = str(source) if source is not None else None
    if data is None:
        raise ScenarioError(file, "", "a mapping with a guest: section", "an empty file")
    if not isinstance(data, dict):
        # described, never quoted: the path may name the wrong file (a password file)
        raise ScenarioError(file, "", "a mapping with a guest: section",
                            "plain text" if isinstance(data, str) else _describe(data)[:12])
    if "name" not in data:
        data = {"name": Path(file).stem if file else "scenario", **data}
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as e:
        lines = _line_index(_text) if _text is not None else {}
        # Unknown keys first: a misspelt key usually explains the "missing" error too.
        raw = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        errors = [_convert(err, data, file, lines) for err in raw]
        first = errors[0]
        first.others = errors[1:]
        raise first from None
    return _resolve_traces(scenario, Path(file).parent if file else Path("."), file)


def _resolve_traces(scenario: Scenario, base: Path, file: str | None) -> Scenario:
    workloads = list(scenario.guest.workloads)
    changed = False
    for i, w in enumerate(workloads):
        if isinstance(w, TraceWorkload):
            p = Path(w.path)
            full = p if p.is_absolute() else base / p
            if not full.is_file():
                raise ScenarioError(file, f"guest.workloads[{i}].path",
                                    "an existing CSV or .npz trace file (relative to the scenario file)",
                                    _describe(w.path))
            from guest.workloads import TraceError, load_trace

            try:
                load_trace(full)
            except TraceError as e:
                raise ScenarioError(file, f"guest.workloads[{i}].path", e.expected, e.found) from None
            workloads[i] = w.model_copy(update={"path": str(full)})
            changed = True
    if not changed:
        return scenario
    guest = scenario.guest.model_copy(update={"workloads": workloads})
    return scenario.model_copy(update={"guest": guest})


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file (``ScenarioError`` on any problem)."""
    file = str(path)
    try:
        text = read_input(path, MAX_FILE_BYTES, "scenario file")
    except InputError as e:
        raise ScenarioError(file, "", e.expected, e.found) from None
    except FileNotFoundError:
        raise ScenarioError(file, "", "a scenario file", "no such file") from None
    except IsADirectoryError:
        raise ScenarioError(file, "", "a scenario file", "a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(file, "", "a readable UTF-8 scenario file", str(e)) from None
    try:
        _check_shape(yaml.compose(text, Loader=_Loader), file)
        data = yaml.load(text, Loader=_Loader)
    except ScenarioError:
        raise
    except RecursionError:
        raise ScenarioError(file, "", f"YAML nested at most {MAX_DEPTH} levels deep", "deeper nesting") from None
    except ValueError as e:    # e.g. an integer past Python's digit limit
        raise ScenarioError(file, "", "valid YAML values", _describe(str(e))) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f" at line {line}, column {mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or "a YAML syntax error"
        err = ScenarioError(file, "", "valid YAML", f"{problem}{where}", line=line)
        raise err from None
    except yaml.YAMLError as e:
        raise ScenarioError(file, "", "valid YAML", str(e).replace("\n", " ")) from None
    return parse_scenario(data, file, _text=text)


# ---------------------------------------------------------------------------- schema

def scenario_json_schema() -> dict:
    """The JSON Schema of scenario files, from the same models that validate them."""
    schema = Scenario.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **schema}


def write_json_schema(path: str | Path = SCHEMA_PATH) -> None:
    Path(path).write_text(json.dumps(scenario_json_schema(), indent=2) + "\n", encoding="utf-8")


def check_scenario_policy(scenario, guest: Path, override: str | None,
                           allowed: frozenset[str] = frozenset()) -> None:
    """The scenario's own policy and parameters, checked before anything runs, with the
    file and field named (the CLI's --policy replaces them). Only built-in policies and
    the user's --allow-policy names can pass; nothing named by the file is imported
    otherwise."""
    if override is not None:
        return
    from migrate.toolstack.policy import PolicyError, make_policy

    mig = scenario.migration
    try:
        make_policy(mig.policy, mig.policy_params, p2m_size=1, allowed=allowed)
    except PolicyError as exc:
        field = (f"migration.policy_params.{exc.field}" if exc.field
                 else "migration.policy_params" if "parameter" in str(exc) else "migration.policy")
        raise UsageError(f"{guest}: {field}: {exc}") from None


if __name__ == "__main__":
    write_json_schema()
    print(f"wrote {SCHEMA_PATH}")
