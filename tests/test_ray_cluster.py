"""The README's cluster step as written: `ray start` twice on this machine, then ``--address``.

The README's lines run in order with this machine's values substituted (a free port for
6379, 127.0.0.1 for HEAD_IP) and a private HOME, so the token the test generates never
touches the real ``~/.ray``. Each `ray start` gets ``--block`` (so the test owns the process
and stops it, instead of `ray stop`, which would stop every Ray on the machine), one CPU,
and its own ``--temp-dir`` (so whatever is left afterwards is found and killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent


def _cluster_block() -> list[str]:
    """The command lines of the tour's step 7 (the bash block under "Run on a cluster")."""
    after = README.split("**7. Run on a cluster.**", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _argv(line: str, port: int) -> list[str]:
    argv = [
        a.replace("HEAD_IP:6379", f"127.0.0.1:{port}").replace("6379", str(port))
        for a in shlex.split(line, comments=True)
    ]
    if ">" in argv:  # the README silences the token; so does the test (stdout not kept)
        assert argv[-2:] == [">", "/dev/null"], argv
        argv = argv[:-2]
    if argv[0].startswith(".venv/bin/"):  # this interpreter's venv, wherever it is
        argv[0] = str(VENV_BIN / argv[0].removeprefix(".venv/bin/"))
    return argv


def _kill_leftovers(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (the cluster's temp dir)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def readme_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """Run the README's set-up lines; yields (address, env with the token, README p2pfed line)."""
    lines = _cluster_block()
    assert len(lines) == 5, lines
    export, generate, head, worker, run_line = lines
    port = _free_port()
    address = f"127.0.0.1:{port}"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    name, _, value = shlex.split(export)[1].partition("=")
    assert shlex.split(export)[0] == "export" and name == "RAY_AUTH_MODE"
    env[name] = value

    gen = subprocess.run(
        _argv(generate, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert (home / ".ray" / "auth_token").stat().st_size > 0

    nodes: list[subprocess.Popen[bytes]] = []
    temp_dir = Path(tempfile.mkdtemp(prefix="p2pfed-ray-"))  # short: socket paths <= 107 B
    extra = ["--block", "--num-cpus", "1", "--temp-dir", str(temp_dir)]
    try:
        for line, dashboard in ((head, ["--include-dashboard=false"]), (worker, [])):
            argv = _argv(line, port)
            assert argv[1:2] == ["start"], argv
            nodes.append(
                subprocess.Popen(
                    [*argv, *extra, *dashboard],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"node{len(nodes)}.log", "wb"),  # noqa: SIM115
                    start_new_session=True,
                )
            )
            if len(nodes) == 1:  # the worker needs the head's GCS up
                deadline = time.monotonic() + 120
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        assert time.monotonic() < deadline, "the head never opened its port"
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            nodes[0].wait(timeout=0.5)  # returns early only if it died
                        assert nodes[0].poll() is None, (tmp_path / "node0.log").read_text()
        deadline = time.monotonic() + 180
        while _alive_nodes(address, env) < 2:  # each probe is a Ray driver: seconds
            for i, node in enumerate(nodes):
                assert node.poll() is None, (tmp_path / f"node{i}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never joined"
        yield address, env, run_line
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)  # ray start --block shuts its node down
        for node in nodes:  # a graceful shutdown takes ~30 s here; nothing of it is needed
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=3)
        _kill_leftovers(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_readme_cluster_step_spreads_hosts_over_both_nodes(
    readme_cluster: tuple[str, dict[str, str], str], tmp_path: Path
) -> None:
    address, env, line = readme_cluster
    port = int(address.rpartition(":")[2])
    readme_argv = _argv(line, port)
    assert readme_argv[1:4] == ["run", "--address", address], readme_argv
    assert readme_argv[-2] == "--out", readme_argv  # replaced by this test's directory
    shrink = ["--progress", "off", "--set", "topology.n=6", "--set", "protocol.rounds=3"]
    shrink += ["--set", "runtime.hosts=2", "--set", "output.report=false"]

    def run(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [*readme_argv[:-2], "--out", str(tmp_path / name), *shrink]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    # a driver without the token is refused in one line, naming what is missing
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    refused = run("refused", no_token)
    assert refused.returncode != 0
    assert "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-2000:]

    # the README's run line, with the token: one PeerHost on each node
    out = run("run", env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == [3] * 6
    placed = [h["node"] for h in summary["hosts"]]
    assert len(placed) == 2 and len(set(placed)) == 2  # one host on each node
