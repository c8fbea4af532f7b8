"""The operator process's configuration: environment variables prefixed TIEREDKV_OPERATOR_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tieredkv_operator import __version__


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIEREDKV_OPERATOR_", extra="forbid")

    agent_image: str = f"ghcr.io/tieredkv/tieredkv:{__version__}"
    """Image of agents and of the plugin init container when a cache does not set agent.image."""
    drift_interval_seconds: float = Field(default=15.0, gt=0)
    """How often every cache is reconciled again: repairs drifted children and refreshes status."""
    agent_pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations on agent pods (JSON object), e.g. for a scraper or a node simulator."""
    namespace: str = ""
    """The operator's own namespace; its pods are never injected. Usually from the downward API."""
    webhook_enabled: bool = False
    """Serve the admission webhooks (pod injection, TieredKVCache validation)."""
    webhook_listen_host: str = "0.0.0.0"
    webhook_public_host: str = ""
    """Host the API server calls (goes into the webhook configuration kopf manages)."""
    webhook_port: int = Field(default=9443, ge=1, le=65535)
    webhook_cert_file: Path | None = None
    webhook_key_file: Path | None = None
    webhook_ca_file: Path | None = None
    """CA that signed the serving certificate (its bundle goes into the webhook configuration)."""
    webhook_configuration_name: str = "tieredkv.io"
    """Name of the Mutating/ValidatingWebhookConfiguration kopf creates and keeps up to date."""

    def summary(self) -> str:
        """One line for the start-up log (no secrets: the settings hold none)."""
        hook = f"webhook on :{self.webhook_port}" if self.webhook_enabled else "webhook off"
        return f"agent image {self.agent_image}, drift every {self.drift_interval_seconds:g}s, {hook}"
