"""Facts shared by the tieredkv operator, the node agent and the vLLM tier plugin (standard library only).

The operator and the agent never import each other (import-linter's `agent-no-operator` contract); what both
must agree on lives here instead. This package imports nothing outside the standard library, because the
plugin's init container copies it into vLLM pods next to `tieredkv_agent`.
"""
