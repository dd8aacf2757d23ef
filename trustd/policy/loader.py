"""Loading policy YAML: many documents per file, strictly.

Everything that is wrong is collected, and the load fails as a whole with one
line per problem, each naming the file, the document (1-based) and the field
path (``policies/shop.yaml: document 2 (PeerAuthentication/shop/default):
spec.mtls.mode: ...``). Rejected on top of what the models refuse:

- duplicate keys in a mapping (YAML would silently keep the last one);
- aliases (``*name``) and merge keys (``<<``), which hide what a document says;
- a document that is not a mapping, an unknown ``apiVersion`` or ``kind``;
- two objects with the same kind, namespace and name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from trustd.policy.errors import PolicyValidationError
from trustd.policy.model import API_VERSION, KINDS, MODELS, PolicyObject

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys, aliases and merge keys."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(
                None, None, "aliases (*name) are not allowed in policy files", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping, found {type(node).__name__}", node.start_mark
            )
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise ConstructorError(
                    None,
                    None,
                    "merge keys (<<) are not allowed in policy files",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first written on line {first}): keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(
    "tag:yaml.org,2002:map",
    lambda loader, node: loader.construct_mapping(node),  # type: ignore[arg-type]
)


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _message(err: Any) -> str:
    typ = err.get("type", "")
    loc = err.get("loc", ())
    if typ == "extra_forbidden":
        return f"unknown field {loc[-1]!r}: remove it or check its spelling"
    if typ == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    found = err.get("input")
    if typ != "value_error" and (found is None or isinstance(found, bool | int | float | str)):
        msg += f" (found {found!r})"
    return msg


def _where(source: str, index: int, data: object) -> str:
    where = f"{source}: document {index}"
    if isinstance(data, dict):
        kind, meta = data.get("kind"), data.get("metadata")
        if isinstance(kind, str) and isinstance(meta, dict):
            ns, name = meta.get("namespace"), meta.get("name")
            if isinstance(ns, str) and isinstance(name, str):
                where += f" ({kind}/{ns}/{name})"
    return where


def parse_object(data: object, *, source: str = "<input>", index: int = 1) -> PolicyObject:
    """Validate one decoded document. Raises PolicyValidationError naming every problem."""
    problems = _validate(data, source=source, index=index, out=[])
    if isinstance(problems, list):
        raise PolicyValidationError(problems)
    return problems


def _validate(data: object, *, source: str, index: int, out: list[str]) -> PolicyObject | list[str]:
    where = _where(source, index, data)
    if not isinstance(data, dict):
        out.append(f"{where}: expected a mapping with apiVersion, kind, metadata and spec")
        return out
    api, kind = data.get("apiVersion"), data.get("kind")
    if api != API_VERSION:
        out.append(f"{where}: apiVersion: must be {API_VERSION!r}, found {api!r}")
    if kind not in KINDS:
        out.append(f"{where}: kind: unknown kind {kind!r}: use one of {', '.join(KINDS)}")
        return out
    try:
        obj = MODELS[str(kind)].model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            if tuple(err.get("loc", ())) == ("apiVersion",):
                continue  # reported above in plainer words
            out.append(f"{where}: {_loc(err.get('loc', ()))}: {_message(err)}")
        return out
    return out if out else obj


def load_text(text: str, *, source: str = "<input>") -> tuple[PolicyObject, ...]:
    """Every object in a multi-document YAML text; raises PolicyValidationError."""
    problems: list[str] = []
    objects = _load_text(text, source=source, problems=problems)
    _check_unique(objects, problems)
    if problems:
        raise PolicyValidationError(problems)
    return tuple(obj for obj, _ in objects)


def _load_text(text: str, *, source: str, problems: list[str]) -> list[tuple[PolicyObject, str]]:
    loader = StrictLoader(text)
    objects: list[tuple[PolicyObject, str]] = []
    index = 0
    try:
        while loader.check_node():
            index += 1
            node = loader.get_node()  # a syntax error here ends the file: see below
            try:
                data = loader.construct_document(node) if node is not None else None
            except ConstructorError as exc:
                # The document was parsed whole; only building it failed, so go on.
                problems.append(f"{source}: document {index}: {_yaml_problem(exc)}")
                loader.constructed_objects = {}
                loader.recursive_objects = {}
                loader.state_generators = []
                continue
            if data is None:
                index -= 1  # an empty document ('---' alone) is not counted
                continue
            result = _validate(data, source=source, index=index, out=[])
            if isinstance(result, list):
                problems.extend(result)
            else:
                objects.append((result, f"{source}: document {index}"))
    except yaml.MarkedYAMLError as exc:
        # Scanner, parser and composer errors: the stream cannot be resynchronised.
        problems.append(f"{source}: document {max(index, 1)}: {_yaml_problem(exc)}")
    except yaml.YAMLError as exc:
        problems.append(f"{source}: not valid YAML: {exc}")
    finally:
        loader.dispose()
    return objects


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    at = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    what = exc.problem or exc.context or "invalid YAML"
    return f"{at}{what}"


def _check_unique(objects: list[tuple[PolicyObject, str]], problems: list[str]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for obj, where in objects:
        first = seen.get(obj.key)
        if first is not None:
            problems.append(
                f"{where} ({obj.ref}): the same kind, namespace and name as {first}: "
                "rename one of them"
            )
        else:
            seen[obj.key] = where


def expand(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The policy files ``paths`` name: files as given; directories, every *.yaml and *.yml
    below them, leaving out hidden names (a Kubernetes ConfigMap mount keeps a hidden
    ``..DATE`` copy of every file beside the visible link). Returns (files, problems)."""
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in (".yaml", ".yml")
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    return files, problems


def load_files(paths: Iterable[str | Path]) -> tuple[PolicyObject, ...]:
    """Every object in the files (directories: every *.yaml and *.yml below them).

    All files are read and every problem is reported; nothing is returned when
    there is one.
    """
    files, problems = expand(paths)
    objects: list[tuple[PolicyObject, str]] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read it: {exc.__class__.__name__}")
            continue
        objects.extend(_load_text(text, source=str(path), problems=problems))
    _check_unique(objects, problems)
    if problems:
        raise PolicyValidationError(problems)
    return tuple(obj for obj, _ in objects)
