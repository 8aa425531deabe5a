"""Build a bootstrapped CACore for tests: a config file in tmp_path, a real database, a keystore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ca.bootstrap import bootstrap
from ca.config import load_config
from ca.core import CACore
from ca.storage import Database

BASE_CONFIG = """
data_dir = "{data_dir}"
[server]
listen = "127.0.0.1:8443"
public_base_url = "http://pki.test"
{server_extra}
[database]
url = "{database_url}"
[hsm]
softhsm_create = {softhsm_create}
pin = {{ env = "PRIVCA_TEST_PIN" }}
so_pin = {{ env = "PRIVCA_TEST_SO_PIN" }}
{hsm_extra}
"""


def write_config(
    directory: Path,
    database_url: str,
    *,
    extra: str = "",
    softhsm_create: bool = False,
    hsm_extra: str = "",
    server_extra: str = "",
) -> Path:
    path = directory / "privca.toml"
    path.write_text(
        BASE_CONFIG.format(
            data_dir=directory / "data",
            database_url=database_url,
            softhsm_create=str(softhsm_create).lower(),
            hsm_extra=hsm_extra,
            server_extra=server_extra,
        )
        + extra
    )
    return path


def make_core(
    directory: Path,
    database_url: str,
    keystore: Any,
    *,
    extra: str = "",
    clock: Any = None,
    server_extra: str = "",
) -> CACore:
    config = load_config(
        write_config(directory, database_url, extra=extra, server_extra=server_extra), environ={}
    )
    core = CACore(config, Database(database_url), keystore, clock=clock)
    core, _ = bootstrap(config, core)
    return core
