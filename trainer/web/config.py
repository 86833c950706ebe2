"""`web:` of trainer.yaml (pydantic only, so the service imports it without the web libraries)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServiceWebConfig(BaseModel):
    """`web:` of trainer.yaml: where the fleet page listens and who may read it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    bind: str = Field("127.0.0.1", description="address to listen on; anything but loopback needs a token")
    port: int = Field(8090, ge=1, le=65535)
    token_file: Optional[Path] = Field(None, description="file holding the access token (one line)")
    token_env: str = Field("INFANTINO_SERVICE_TOKEN", description="environment variable holding the token "
                           "(used when token_file is not set)")
    operator_token_file: Optional[Path] = Field(None, description="file holding the operator token: it may also "
                                                "commit or abort a canary version (rollout)")
    operator_token_env: str = Field("INFANTINO_SERVICE_OPERATOR_TOKEN", description="environment variable holding "
                                    "the operator token (used when operator_token_file is not set)")
    mlflow_ui: Optional[str] = Field(None, description="base URL of the MLflow UI, for links to the runs")

    def token(self) -> Optional[str]:
        """The configured token (file first, then the environment), or None."""
        if self.token_file is not None:
            return self.token_file.read_text().strip() or None
        return os.environ.get(self.token_env) or None

    def operator_token(self) -> Optional[str]:
        """The operator token (file first, then the environment), or None."""
        if self.operator_token_file is not None:
            return self.operator_token_file.read_text().strip() or None
        return os.environ.get(self.operator_token_env) or None

    @model_validator(mode="after")
    def _token_for_lan(self):
        if self.enabled and self.bind not in LOOPBACK and not (self.token() or self.operator_token()):
            raise ValueError(f"web.bind {self.bind!r} is not loopback: set web.token_file or ${self.token_env} "
                             "(and put TLS in front, see docs/trainer.md)")
        return self
