"""One owning process per data folder (issue 13, item 1).

The lock is the kernel's (``flock``), so these tests use real processes: a second manager, a
second ``embedsvc serve`` and the in-process CLI commands are refused while an owner lives, and
the folder is free again the moment the owner dies, even by kill -9.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from embedsvc.collections import CollectionManager
from embedsvc.collections.ownership import LOCK_FILE, DataDirOwned
from embedsvc.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DEBUG_ENV = {"EMBEDSVC_PRELOAD_STRATEGIES": '["debug"]'}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **DEBUG_ENV)
    return subprocess.run(
        [sys.executable, "-m", "embedsvc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_a_second_manager_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = CollectionManager(tmp_path)
    with pytest.raises(DataDirOwned) as refused:
        CollectionManager(tmp_path)
    message = refused.value.message
    assert f"pid {os.getpid()}" in message and str(tmp_path) in message
    assert refused.value.code == "FAILED_PRECONDITION"
    first.close()
    CollectionManager(tmp_path).close()  # released on close
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"]


def test_a_killed_owner_leaves_no_stale_lock(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from embedsvc.collections import CollectionManager
        m = CollectionManager({str(tmp_path)!r})
        print("owned", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "owned"
        with pytest.raises(DataDirOwned, match=f"pid {proc.pid} "):
            CollectionManager(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    CollectionManager(tmp_path).close()  # the kernel dropped the dead owner's lock


def test_two_servers_on_one_folder_the_second_is_refused(tmp_path: Path) -> None:
    """Issue 13's failure: B deleted a collection A then acknowledged a write into; lost on
    restart. Now B exits at once with a one-line reason, and A's writes all survive."""
    data = tmp_path / "indexes"
    with ServerProcess(data, env=DEBUG_ENV) as a:
        a.client.create_collection("c", strategy="debug")
        assert a.client.upsert("c", [{"id": "a1", "text": "written by A"}]).inserted == 1
        started = time.monotonic()
        b = _cli("serve", "--port", "0", "--http-port", "0", "--data-dir", str(data))
        elapsed = time.monotonic() - started
        assert b.returncode != 0, b.stdout + b.stderr
        assert "listening" not in b.stdout
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1, b.stderr
        assert "is owned by another embedsvc process" in lines[0]
        assert f"pid {a.proc.pid} " in lines[0] and "'embedsvc serve'" in lines[0]
        assert f"--server 127.0.0.1:{a.port}" in lines[0]
        assert elapsed < 60, elapsed  # no model load, no waiting for the lock
        # A was not disturbed: it still owns, reads and writes its folder
        assert a.client.upsert("c", [{"id": "a2", "text": "after B"}]).inserted == 1
        assert a.stop() == 0, a.tail()
    with ServerProcess(data, env=DEBUG_ENV) as again:  # the lock went with A
        assert again.client.get_collection("c").document_count == 2


def test_in_process_cli_on_a_served_folder_points_to_the_server(tmp_path: Path) -> None:
    data = tmp_path / "indexes"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in "ab"))
    with ServerProcess(data, env=DEBUG_ENV) as server:
        hint = f"--server 127.0.0.1:{server.port}"
        index = ("index", str(docs), "-c", "c", "--strategy", "debug")
        refused = _cli(*index, "--data-dir", str(data))
        assert refused.returncode == 2 and hint in refused.stderr, refused.stderr
        search = _cli("search", "text a", "-c", "c", "--data-dir", str(data))
        assert search.returncode == 2 and hint in search.stderr, search.stderr
        assert not server.client.list_collections()  # nothing was written beside the server
        via_server = _cli(*index, "--server", f"127.0.0.1:{server.port}")
        assert via_server.returncode == 0, via_server.stderr
        assert json.loads(via_server.stdout.strip().splitlines()[-1])["inserted"] == 2
        assert server.client.get_collection("c").document_count == 2
