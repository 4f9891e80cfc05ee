"""Configuration of the clinician web service, validated once at start-up.

Every limit a hostile or careless upload could hit (bytes, pixels, batch size) lives here with a
safe default, so the code that enforces it never invents its own number. Nothing secret is read
from this object's defaults: the optional LLM key is named by an environment variable, never
stored in code or in the settings themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

MB = 1024 * 1024


class ServeSettings(BaseModel):
    """Everything :func:`medlens.serve.create_app` needs; ``run`` builds it from CLI options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundles: list[Path] = Field(min_length=1, description="model bundle folders to serve")
    workspace: Path = Path("medlens-workspace")
    # None: $DATABASE_URL if set, else a SQLite file inside the workspace.
    database_url: str | None = None

    # Uploads.
    max_upload_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(50_000_000, gt=0)
    max_batch_files: int = Field(200, gt=0)
    max_batch_mb: float = Field(200.0, gt=0)
    keep_dicom_identifiers: bool = False

    # Accounts and sessions.
    signup_open: bool = True  # initial state; an admin can close sign-up at run time
    session_hours: float = Field(12.0, gt=0)
    cookie_secure: bool | None = None  # None: Secure whenever the request arrived over HTTPS
    min_password_length: int = Field(10, ge=8)
    login_window_s: int = Field(300, gt=0)
    login_max_per_ip: int = Field(20, gt=0)
    login_max_per_user: int = Field(5, gt=0)

    # Results.
    default_method: str = "gradcam++"
    borderline_margin: float = Field(0.05, ge=0, le=0.5)
    device: str = "cpu"
    warm_models: bool = True  # one blank prediction per model before the server listens
    warm_explanations: bool = True  # import the CAM library in the background at start-up

    # Optional LLM rewrite of the plain-language summary (off unless llm_url is set).
    llm_url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1
    llm_model: str = "local-model"
    llm_api_key_env: str = "MEDLENS_LLM_API_KEY"  # name of the variable holding the key
    llm_timeout_s: float = Field(20.0, gt=0)

    @field_validator("bundles")
    @classmethod
    def _bundles_exist(cls, v: list[Path]) -> list[Path]:
        return [Path(p) for p in v]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * MB)

    def resolved_database_url(self) -> str:
        """The URL given, else ``$DATABASE_URL``, else ``sqlite:///<workspace>/medlens.db``."""
        if self.database_url:
            return self.database_url
        env = os.environ.get("DATABASE_URL")
        if env:
            return env
        return f"sqlite:///{(self.workspace / 'medlens.db').resolve()}"
