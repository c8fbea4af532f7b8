"""Recognising a vLLM OpenAI server invocation in a container's command + args (pure).

The pod-injection webhook appends `--kv-transfer-config $(TIEREDKV_KV_TRANSFER_CONFIG)` to the args, which is
only safe when the argv really starts vLLM's server. Recognised forms (argv = command + args):

* `vllm serve ...` (any path to the `vllm` executable);
* `python[3[.N]] [interpreter flags] -m vllm.entrypoints.openai.api_server ...`;
* `python[3[.N]] [interpreter flags] -m vllm.entrypoints.cli.main serve ...`;
* no `command` at all: the image's entrypoint is taken to be vLLM's server (as in the vllm/vllm-openai
  images), unless the args themselves start a shell.

Only vLLM's own commands are recognised: anything else, tieredkv's stand-in engine included, is not vLLM and
gets no flag. Shell wrappers (`sh -c "vllm serve ..."`) are deliberately not parsed: editing a shell string
reliably is not possible, so they are reported as not recognised. A pod whose container passes the config on
itself says so with the annotation `tieredkv.io/kv-transfer-config: env`, and then its command is not read.
These functions run on kopf's admission handler threads and must stay fast and pure.
"""

import posixpath
import re
from collections.abc import Sequence
from typing import Final, Literal

KV_TRANSFER_FLAG: Final = "--kv-transfer-config"
"""The flag the webhook adds (vLLM also accepts the underscore spelling and `--flag.key` sub-options)."""
_FLAG_SPELLINGS: Final = (KV_TRANSFER_FLAG, "--kv_transfer_config")
API_SERVER_MODULE: Final = "vllm.entrypoints.openai.api_server"
CLI_MODULE: Final = "vllm.entrypoints.cli.main"
SHELLS: Final = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh"})
_PYTHON = re.compile(r"^python(3(\.[0-9]+)?)?$")
_PYTHON_FLAGS_WITH_VALUE: Final = frozenset({"-W", "-X", "-Q"})

FlagState = Literal["absent", "ours", "foreign"]


def unrecognised_reason(command: Sequence[str], args: Sequence[str]) -> str | None:
    """None when the argv starts vLLM's server; otherwise why not, phrased to follow "the container ..."."""
    if not command:
        if args and _is_shell(args[0]):
            return f"runs a shell ({_show(args)}), which tieredkv does not edit"
        return None
    argv = [*command, *args]
    program = posixpath.basename(argv[0])
    if _is_shell(argv[0]):
        return f"runs a shell ({_show(argv)}), which tieredkv does not edit"
    if program == "vllm":
        return None if argv[1:2] == ["serve"] else f"runs `vllm` without `serve` ({_show(argv)})"
    if _PYTHON.match(program):
        return (
            None if _python_runs_vllm(argv) else f"runs Python without vLLM's server module ({_show(argv)})"
        )
    return f"does not start vLLM's server directly ({_show(argv)})"


def kv_flag_state(argv: Sequence[str], value: str) -> FlagState:
    """Whether the argv sets --kv-transfer-config: not at all, only as `FLAG value` (ours), or otherwise."""
    positions = [i for i, token in enumerate(argv) if _is_kv_flag(token)]
    if not positions:
        return "absent"
    ours = all(argv[i] == KV_TRANSFER_FLAG and argv[i + 1 : i + 2] == [value] for i in positions)
    return "ours" if ours and len(positions) == 1 else "foreign"


def _is_kv_flag(token: str) -> bool:
    return any(token == flag or token.startswith((f"{flag}=", f"{flag}.")) for flag in _FLAG_SPELLINGS)


def _is_shell(program: str) -> bool:
    return posixpath.basename(program) in SHELLS


def _python_runs_vllm(argv: Sequence[str]) -> bool:
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
        i += 2 if argv[i] in _PYTHON_FLAGS_WITH_VALUE else 1
    module = argv[i + 1 : i + 2]
    if argv[i : i + 1] != ["-m"] or not module:
        return False
    return module[0] == API_SERVER_MODULE or (module[0] == CLI_MODULE and argv[i + 2 : i + 3] == ["serve"])


def _show(argv: Sequence[str], limit: int = 60) -> str:
    text = " ".join(argv)
    return f"`{text}`" if len(text) <= limit else f"`{text[: limit - 3]}...`"
