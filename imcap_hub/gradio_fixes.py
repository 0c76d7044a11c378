"""Fixes to Gradio 6.31's behaviour, applied by app.py to the Gradio objects it passes in.
This module never imports gradio: ``imcap_hub`` stays usable without it.

- A ``batch=True`` event's validator answers a tuple, which ``process_validation_response``
  takes for "valid", so one bad image would fail every request of its batch.
- The API docs page describes a parameter with its component's ``additional_description``,
  never with the ``Args:`` of the function's docstring (which only the MCP server reads).
- A Textbox's label also wraps its Copy button, which then takes the label: the text itself has
  no accessible name.
- ``delete_cache``'s sweep walks the live set of uploads in a worker thread: an upload that
  arrives meanwhile raises "Set changed size during iteration", which ends the sweep task for
  good, silently, and a busy Space then keeps every upload.
- The MCP server sends a dict or list answer as ``str()``, a Python repr, and names itself
  after the page, with the ``mcp`` package's version; and the schema of a list of files keeps
  its definitions inside the parameter while its ``$ref`` points at the schema's root, so MCP
  clients refuse every call of such a tool, and the server finds its files at ``items``, not at
  the list's indices, so it would not turn their URLs into files.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import Any

from . import __version__

log = logging.getLogger(__name__)

PATCHED_GRADIO = "6.31.0"  # the Gradio version accept_batched_validator_answers was written for


def _fixed_or_skipped(original: Any, gradio_version: str, patch: str, risk: str) -> bool | None:
    """True when ``original`` is the fix already; False, with a warning naming ``risk``, on a
    Gradio other than :data:`PATCHED_GRADIO`; None when the fix is to be made."""
    if getattr(original, "_imcap_fixed", False):
        return True
    if gradio_version != PATCHED_GRADIO:
        log.warning(
            f"Skipped the {patch} patch: it was written for Gradio {PATCHED_GRADIO} and this is "
            f"{gradio_version}; {risk}"
        )
        return False
    return None


def accept_batched_validator_answers(queueing: ModuleType, gradio_version: str) -> bool:
    """Make ``gradio.queueing.process_validation_response`` read a batched validator's tuple.
    On another Gradio version: skipped with a warning, not refused (the bug costs a batch, not
    the server; patching a private function that changed could break every request)."""
    original = queueing.process_validation_response
    done = _fixed_or_skipped(
        original, gradio_version, "batched-validator", "a bad image may fail its whole batch"
    )
    if done is not None:
        return done

    @functools.wraps(original)  # the original stays reachable as __wrapped__
    def process_validation_response(validation_response, fn=None):
        if isinstance(validation_response, tuple):
            validation_response = list(validation_response)
        return original(validation_response, fn)

    process_validation_response._imcap_fixed = True  # type: ignore[attr-defined]
    queueing.process_validation_response = process_validation_response
    return True


def describe_parameters(
    parse: Callable[[Callable], tuple[str, dict[str, str], list[str]]],
    endpoints: Sequence[tuple[Callable, Sequence[Any]]],
) -> None:
    """For each (function, its input components): give each component's API info the
    docstring's description of its parameter, as ``additional_description`` (what the API docs
    page shows). ``parse``: ``gradio.utils.get_function_description``."""
    for fn, components in endpoints:
        _, described, _ = parse(fn)
        for name, component in zip(inspect.signature(fn).parameters, components):
            if described.get(name):
                info = component.api_info
                text = described[name]
                component.api_info = lambda info=info, text=text: {
                    **info(),
                    "additional_description": text,
                }


def name_textarea(elem_id: str, name: str) -> str:
    """Page JavaScript (``launch(js=...)``) naming the textarea of the Textbox ``elem_id``."""
    return (
        f"() => document.querySelector('#{elem_id} textarea')?.setAttribute('aria-label', '{name}')"
    )


def sweep_uploads_safely(route_utils: ModuleType, gradio_version: str) -> bool:
    """Make ``gradio.route_utils.delete_files_created_by_app`` sweep copies of the upload sets
    (then drop what it deleted from the live ones). On another Gradio version: skipped, with a
    warning."""
    original = route_utils.delete_files_created_by_app
    done = _fixed_or_skipped(
        original, gradio_version, "upload-sweep", "under load, uploads may stop being deleted"
    )
    if done is not None:
        return done

    @functools.wraps(original)
    def delete_files_created_by_app(blocks, age):
        live = list(blocks.temp_file_sets)
        before = [set(files) for files in live]  # set() copies without a thread switch
        after = [set(files) for files in before]
        original(SimpleNamespace(blocks=blocks.blocks, temp_file_sets=after), age)
        for files, old, kept in zip(live, before, after):
            files -= old - kept

    delete_files_created_by_app._imcap_fixed = True  # type: ignore[attr-defined]
    route_utils.delete_files_created_by_app = delete_files_created_by_app
    return True


def fix_mcp_server(blocks: Any) -> None:
    """Make the MCP server of the launched ``blocks`` (a ``gradio.Blocks``) answer dicts and
    lists as JSON text, call itself ``imcap`` with imcap's version, and give a list of files a
    schema that resolves."""
    server = getattr(blocks, "mcp_server_obj", None)
    if server is None:
        return
    server.mcp_server.name, server.mcp_server.version = "imcap", __version__
    original = server.postprocess_output_data

    def postprocess_output_data(data: list[Any], root_url: str) -> list[Any]:
        as_json = [json.dumps(d) if isinstance(d, (dict, list)) else d for d in data]
        return original(as_json, root_url)

    server.postprocess_output_data = postprocess_output_data
    for endpoint in server.api_info["named_endpoints"].values():
        for parameter in endpoint["parameters"]:
            parameter["type"] = inline_definitions(parameter["type"])
    convert = server.convert_strings_to_filedata

    def convert_strings_to_filedata(value: Any, positions: list[list[str | int]]) -> Any:
        # Gradio finds a list's files at [..., "items"]; the arguments hold them at [..., 0], ...
        return convert(value, [p for position in positions for p in _at(position, value)])

    server.convert_strings_to_filedata = convert_strings_to_filedata


def _at(position: list[str | int], value: Any, prefix: tuple = ()) -> list[list[str | int]]:
    """The concrete paths in ``value`` that ``position`` names, ``"items"`` standing for every
    index of a list."""
    if not position:
        return [list(prefix)]
    head, *rest = position
    if head == "items" and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _at(rest, item, (*prefix, i))]
    if isinstance(value, dict) and head in value:
        return _at(rest, value[head], (*prefix, head))
    return [list(prefix) + list(position)]


def inline_definitions(schema: Any) -> Any:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by its own ``$defs`` entry X, and
    the ``$defs`` gone: a parameter's schema that stands alone wherever it is put."""
    defs = schema.get("$defs") if isinstance(schema, dict) else None
    if not defs:
        return schema

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
        return {k: resolve(v) for k, v in node.items() if k != "$defs"}

    return resolve(schema)
