"""schemathesis hooks (SCHEMATHESIS_HOOKS) for the admin API run: a fresh admin token on demand.

The fuzzer calls DELETE /tokens/{id} with small ids, so it revokes the token it is using (the
first tokens of a new server have ids 1, 2, ...). On a 401 schemathesis drops the cached token
and asks this provider again, which makes a new one the operator's way: `privca token create`
against the served configuration (PRIVCA_ADMIN_API_CONFIG), in the server's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import schemathesis

_PRIVCA = str(Path(sys.executable).with_name("privca"))


@schemathesis.auth()
class FreshAdminToken:
    def get(self, case: Any, context: Any) -> str:
        created = subprocess.run(
            [
                _PRIVCA,
                "--config",
                os.environ["PRIVCA_ADMIN_API_CONFIG"],
                "token",
                "create",
                "--name",
                "schemathesis",
                "--scope",
                "admin",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return created.stdout.strip()

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
