"""Admission (pure: no kopf, no client): pod injection and its pod edits, vLLM command detection, label
selectors, and the validation of TieredKVCache objects, including the children a spec would produce.

The kopf handlers that call these live in `webhooks.py`; `resources/` holds only the child builders."""
