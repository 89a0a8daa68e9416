"""A tiny griffe extension: give attrs classes the ``__init__`` attrs generates.

griffe reads source statically and knows ``dataclasses`` but not ``attrs``, so an
``@attrs.frozen`` class has no visible signature and the ``:param x:`` entries of
its docstring look like parameters of nothing (a warning under ``--strict``).
This rebuilds the signature from the annotated fields, honouring
``kw_only=``, ``attrs.field(default=..., factory=..., init=False, kw_only=...,
alias=...)`` and ``ClassVar``. Loaded by ``mkdocs.yml``; not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ATTRS_DECORATORS = frozenset(
    {
        "attrs.define",
        "attrs.frozen",
        "attrs.mutable",
        "attr.s",
        "attr.attrs",
        "attr.define",
        "attr.frozen",
        "attr.mutable",
    }
)
_FIELD_FUNCTIONS = frozenset({"attrs.field", "attr.ib", "attr.attrib", "attr.field"})


def _call_args(expr: Any) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if isinstance(expr, griffe.ExprCall):
        for argument in expr.arguments:
            if isinstance(argument, griffe.ExprKeyword):
                args[argument.name] = argument.value
    return args


def _attrs_decorator(cls: griffe.Class) -> dict[str, Any] | None:
    for decorator in cls.decorators:
        value = decorator.value
        function = value.function if isinstance(value, griffe.ExprCall) else value
        if isinstance(function, griffe.Expr) and function.canonical_path in _ATTRS_DECORATORS:
            return _call_args(value)
    return None


def _field_args(attribute: griffe.Attribute) -> dict[str, Any] | None:
    value = attribute.value
    if isinstance(value, griffe.ExprCall) and value.function.canonical_path in _FIELD_FUNCTIONS:
        return _call_args(value)
    return None


def _parameters(cls: griffe.Class, kw_only: bool) -> list[griffe.Parameter]:
    parameters: list[griffe.Parameter] = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute:
            continue
        attribute: griffe.Attribute = member  # type: ignore[assignment]
        if attribute.annotation is None:
            continue
        if "property" in attribute.labels or (
            "class-attribute" in attribute.labels and "instance-attribute" not in attribute.labels
        ):
            continue  # ClassVar or property: not a field
        field = _field_args(attribute)
        if field is not None and str(field.get("init")) == "False":
            continue
        name = attribute.name.lstrip("_")
        if field is not None and "alias" in field:
            name = str(field["alias"]).strip("'\"")
        if field is None:
            default = attribute.value
        elif "factory" in field:
            default = griffe.ExprCall(function=field["factory"], arguments=[])
        else:
            default = field.get("default")
        keyword = kw_only or (field is not None and str(field.get("kw_only")) == "True")
        parameters.append(
            griffe.Parameter(
                name,
                annotation=attribute.annotation,
                kind=griffe.ParameterKind.keyword_only
                if keyword
                else griffe.ParameterKind.positional_or_keyword,
                default=default,
                docstring=attribute.docstring,
            )
        )
    # Python requires positional parameters without defaults first; attrs does too.
    positional = [p for p in parameters if p.kind is not griffe.ParameterKind.keyword_only]
    keyword_only = [p for p in parameters if p.kind is griffe.ParameterKind.keyword_only]
    return positional + keyword_only


#: ``:class:`~pkg.Name``` and friends (Sphinx roles) -> ```Name``` (a Markdown code span).
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
#: A paragraph ending in ``::`` introduces an indented literal block in reST.
_LITERAL_MARKER = re.compile(r"::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


_MULTI_RAISES = re.compile(r"^(\s*):raises ([\w.]+(?:\s*,\s*[\w.]+)+):(.*)$")


def _split_raises(text: str) -> str:
    """``:raises A, B: why`` (one field for several types) becomes one field per type,
    which is what griffe's Sphinx parser understands."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MULTI_RAISES.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, names, why = match.groups()
        parts = [why.strip()]
        i += 1
        while (
            i < len(lines)
            and lines[i].strip()
            and len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            parts.append(lines[i].strip())
            i += 1
        reason = " ".join(p for p in parts if p)
        out.extend(f"{indent}:raises {name.strip()}: {reason}" for name in names.split(","))
    return "\n".join(out)


def markdownify(text: str) -> str:
    """Turn the reST bits used in jido_trio docstrings into Markdown."""
    text = _split_raises(_ROLE.sub(_role, text))
    return _LITERAL_MARKER.sub(":", text)


class ReSTRoles(griffe.Extension):
    """Render Sphinx cross-reference roles as code spans (docstrings stay reST in the source)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdownify(obj.docstring.value)


class AttrsInit(griffe.Extension):
    """Add the attrs-generated ``__init__`` to ``@attrs.define``/``@attrs.frozen`` classes."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if "__init__" in cls.members:
            return
        options = _attrs_decorator(cls)
        if options is None:
            return
        kw_only = str(options.get("kw_only")) == "True"
        init = griffe.Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parent=cls,
            parameters=griffe.Parameters(
                griffe.Parameter(
                    "self", annotation=None, kind=griffe.ParameterKind.positional_or_keyword
                ),
                *_parameters(cls, kw_only),
            ),
            returns="None",
        )
        cls.set_member("__init__", init)
