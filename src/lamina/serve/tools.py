"""Tool calls in the Hermes format: the tools are described to the model, its calls come back as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and are parsed into OpenAI's
`tool_calls`; a reply that is one JSON object `{"name": ..., "parameters": {...}}` (Llama 3.1's
JSON tool calling) is a call too.

Everything the client wrote goes through the chat template as message content, never as template
text: the tool descriptions join the system message, an assistant's earlier calls are its text,
and a tool's result is a user turn wrapped in `<tool_response>` (as Hermes-style templates render
it). So a control token spelled inside a tool description or result stays text, as everywhere
else in lamina's chat rendering. With `tool_choice` "required" or a named function the reply is
held by a grammar (`lamina.serve.grammar`) to one call of an allowed function whose arguments
validate against its parameters' JSON schema."""

from __future__ import annotations

import json
import re
import uuid

from .grammar import JSON_OPTIONS

CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
INSTRUCTIONS = ("You may call functions to help with the request. The functions are described in JSON "
                "schema within <tools></tools>:\n<tools>\n{tools}\n</tools>\nTo call a function, reply with "
                "<tool_call>{{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}}</tool_call>, "
                "one such block per call.")


def render(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Plain chat messages (system, user, assistant alternating) of an OpenAI conversation with
    tools: their description joins the system message; assistant calls become their text; tool
    results become user turns (consecutive ones merged)."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            content += "".join("<tool_call>" + json.dumps({"name": c["function"]["name"],
                                                          "arguments": json.loads(c["function"]["arguments"] or "{}")})
                               + "</tool_call>" for c in m["tool_calls"])
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + content}
                continue
        out.append({"role": role, "content": content})
    if tools:
        described = INSTRUCTIONS.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def call_grammar(tools: list[dict], name: str | None = None) -> str:
    """A grammar for one `<tool_call>` of `name` (or of any of the tools), its arguments valid."""
    import llguidance
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    schema = {"anyOf": [{"type": "object", "properties": {
        "name": {"const": f["name"]}, "arguments": f.get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"], "additionalProperties": False} for f in chosen],
        "x-guidance": JSON_OPTIONS}
    return llguidance.LLMatcher.grammar_from_lark(
        'start: "<tool_call>" call "</tool_call>"\ncall: %json ' + json.dumps(schema))


def parse(text: str, tools: list[dict]) -> tuple[str | None, list[dict]]:
    """(the text besides the calls, or None; OpenAI `tool_calls`) of a reply. Only calls of the
    request's tools with a JSON object of arguments count; anything else stays text."""
    names = {t["function"]["name"] for t in tools}
    calls, spans = [], []
    for m in CALL.finditer(text):
        call = _call(m.group(1), names)
        if call:
            calls.append(call)
            spans.append(m.span())
    if not calls and text.strip().startswith("{"):                  # Llama 3.1: the reply is the call
        call = _call(text.strip(), names, key="parameters")
        if call:
            return None, [call]
    rest = text
    for start, end in reversed(spans):
        rest = rest[:start] + rest[end:]
    return (rest.strip() or None) if calls else text, calls


def _call(raw: str, names: set[str], key: str = "arguments") -> dict | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    args = obj.get(key, obj.get("arguments")) if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(args, dict):
        return None
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args)}}
