"""The admin API against its own OpenAPI document, by schemathesis, on a real `privca serve`.

schemathesis reads the document the server serves and sends what it describes and what it rules
out: examples, the coverage phase's edge values, hypothesis fuzzing and stateful sequences
(create a token, then use and revoke it), with every check on (schemathesis's default; the
config file turns one off where a schema cannot say what is valid). So the document lists every
status an operation answers, what it declares valid is accepted, what it rules out is refused
with a 4xx, 405 answers carry Allow, and nothing is ever a 500. The run is bounded by examples
per operation and a fixed seed (PRIVCA_SCHEMATHESIS_SEED overrides it to explore further).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.server import RunningServer

SUPPORT = Path(__file__).resolve().parent.parent / "support"
ST = str(Path(sys.executable).with_name("st"))
MAX_EXAMPLES = 25


def test_admin_api_matches_its_openapi_document(server: RunningServer, tmp_path: Path) -> None:
    environment = {
        **server.env,
        "SCHEMATHESIS_HOOKS": str(SUPPORT / "admin_api_auth.py"),
        "PRIVCA_ADMIN_API_CONFIG": str(server.config_path),
        "NO_COLOR": "1",
    }
    report = tmp_path / "report"
    result = subprocess.run(
        [
            ST,
            "--config-file",
            str(SUPPORT / "schemathesis.toml"),
            "run",
            f"{server.base_url}/api/v1/openapi.json",
            "--url",
            f"{server.base_url}/api/v1",
            "--tls-verify",
            str(server.root_pem),
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            os.environ.get("PRIVCA_SCHEMATHESIS_SEED", "20261127"),
            "--request-timeout",
            "30",
            "--report-dir",
            str(report),
            "--report",
            "junit",
        ],
        env=environment,
        cwd=tmp_path,  # schemathesis keeps a cache directory where it runs
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "Tested: 11" in result.stdout, result.stdout[-5000:]
    log_lines = server.log().splitlines()
    crashes = [line for line in log_lines if "unhandled error" in line or "Traceback" in line]
    assert not crashes, crashes[:5]
