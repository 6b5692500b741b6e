"""dkuxnet.jobs with real child processes (tiny ``python -c`` scripts, no model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dkuxnet.jobs import (
    CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW,
    JOB_FILE,
    RUN_TOKEN_ENV,
    Job,
    JobState,
    child_environment,
    clear_stale_stop_request,
    dkuxnet_command,
    popen_options,
)
from dkuxnet.runs import STOP_REQUEST_FILE

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")


def script_job(tmp_path: Path, body: str, **kwargs) -> Job:
    """A job running ``body`` (Python) with ``EVENTS`` bound to the events path."""
    folder = tmp_path / "job"
    code = "import json, os, sys, time\nEVENTS = 'events.jsonl'\n" + textwrap.dedent(body)
    return Job(folder, [sys.executable, "-c", code], **kwargs)


EMIT = """
def emit(_event, **fields):
    with open(EVENTS, "a") as f:
        f.write(json.dumps({"event": _event, "time": time.time(), **fields}) + "\\n")
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state where /proc exists
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    return True


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_command_and_environment() -> None:
    cmd = dkuxnet_command(["predict", "--model", Path("m.pt")], python_executable="PythonSlicer")
    assert cmd == ["PythonSlicer", "-m", "dkuxnet", "predict", "--model", "m.pt"]
    env = child_environment({"X_TEST": "1"})
    import dkuxnet

    root = str(Path(dkuxnet.__file__).resolve().parent.parent)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root
    assert env["PYTHONUNBUFFERED"] == "1" and env["X_TEST"] == "1"


def test_children_spin_briefly_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    env = child_environment()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own setting wins, alone
    env = child_environment()
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in env
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    env = child_environment()
    assert env["GOMP_SPINCOUNT"] == "300000" and "OMP_WAIT_POLICY" not in env


def test_the_command_line_shares_the_cpu_too(tmp_path: Path) -> None:
    """``dkuxnet`` sets the same before a subcommand loads torch (the user's setting wins)."""
    code = (
        "import os, sys\nfrom dkuxnet.cli import main\n"
        "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {
        k: v
        for k, v in child_environment().items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "PASSIVE 1000"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "ACTIVE None"


def test_events_are_polled_incrementally_and_job_completes(tmp_path: Path) -> None:
    job = script_job(
        tmp_path,
        EMIT
        + """
emit("started", job="predict", total=3)
for i in range(3):
    emit("progress", stage="predicting", done=i + 1, total=3)
    time.sleep(0.05)
print("all done")
emit("finished", status="completed", error=None)
""",
        config={"kind": "test"},
    )
    assert job.state is JobState.NOT_STARTED and job.poll() == []
    job.start()
    assert job.state is JobState.RUNNING
    seen: list[dict] = []
    deadline = time.monotonic() + 20
    while not job.state.is_final and time.monotonic() < deadline:
        seen.extend(job.poll())
        time.sleep(0.02)
    assert job.state is JobState.COMPLETED and job.returncode == 0
    assert [e["event"] for e in seen] == ["started"] + ["progress"] * 3 + ["finished"]
    assert seen == job.events
    assert job.poll() == []  # nothing twice
    assert "all done" in job.log_tail(5)
    record = json.loads((job.folder / JOB_FILE).read_text())
    assert record["kind"] == "test" and record["command"][0] == sys.executable
    assert job.started_at is not None and job.ended_at is not None
    elapsed = job.elapsed_s
    assert elapsed == job.ended_at - job.started_at > 0
    time.sleep(0.05)
    assert job.elapsed_s == elapsed  # frozen after the end


def test_half_written_line_is_held_back(tmp_path: Path) -> None:
    job = script_job(
        tmp_path,
        """
with open(EVENTS, "a") as f:
    f.write('{"event": "progress", "done": 1}\\n{"event": "progr')
    f.flush()
    time.sleep(1.0)
    f.write('ess", "done": 2}\\n')
""",
    )
    job.start()
    assert wait_for(lambda: bool(job.poll()) or bool(job.events))
    assert [e["done"] for e in job.events] == [1]
    assert job.wait(timeout=20) is JobState.COMPLETED
    assert [e["done"] for e in job.events] == [1, 2]


def test_failure_reports_exit_code_and_log_tail(tmp_path: Path) -> None:
    job = script_job(
        tmp_path, "print('line one')\nsys.stderr.write('boom: bad input\\n')\nsys.exit(3)"
    )
    job.start()
    assert job.wait(timeout=20) is JobState.FAILED
    assert job.returncode == 3
    assert "boom: bad input" in job.log_tail(2)
    assert "exit code 3" in job.error_message() and "boom" in job.error_message()


def test_failed_event_wins_over_exit_code_zero(tmp_path: Path) -> None:
    job = script_job(tmp_path, EMIT + "emit('finished', status='failed', error='no labels')")
    job.start()
    assert job.wait(timeout=20) is JobState.FAILED
    assert job.error_message() == "no labels"


def test_missing_executable_raises(tmp_path: Path) -> None:
    job = Job(tmp_path / "job", [str(tmp_path / "no-such-python")])
    with pytest.raises(OSError):
        job.start()
    assert job.state is JobState.NOT_STARTED


@POSIX_ONLY
def test_cancel_graceful_child_reports_cancelled(tmp_path: Path) -> None:
    """A child that handles SIGTERM like the trainer: finish up, write finished: cancelled."""
    job = script_job(
        tmp_path,
        EMIT
        + """
import signal
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
emit("started", job="train", total=1000)
while not stop:
    time.sleep(0.02)
emit("checkpoint", iteration=1, path="last.pt", kind="last")
emit("finished", status="cancelled", error=None)
""",
    )
    job.start()
    assert wait_for(lambda: any(e["event"] == "started" for e in job.poll() + job.events))
    job.cancel(grace_s=60)
    assert job.state is JobState.CANCELLED
    assert job.returncode == 0  # it exited by itself: a kill would make it -9
    assert [e["event"] for e in job.events][-2:] == ["checkpoint", "finished"]


@POSIX_ONLY
def test_cancel_kills_stubborn_child_and_grandchild(tmp_path: Path) -> None:
    """SIGTERM ignored by both; the kill after the grace period ends the whole tree."""
    job = script_job(
        tmp_path,
        """
import signal, subprocess
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open("grandchild.pid", "w").write(str(child.pid))
time.sleep(600)
""",
    )
    job.start()
    pid_file = job.folder / "grandchild.pid"
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)
    t0 = time.monotonic()
    job.cancel(grace_s=0.5)
    assert time.monotonic() - t0 < 60  # the kill came after the grace, not never
    assert job.state is JobState.CANCELLED
    assert job.returncode is not None and job.returncode < 0
    assert wait_for(lambda: not pid_alive(grandchild), timeout=5)


@POSIX_ONLY
def test_cancel_without_waiting_escalates_in_poll(tmp_path: Path) -> None:
    """The GUI path: cancel returns at once; later polls send the kill."""
    job = script_job(
        tmp_path,
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open('ready', 'w').close()\ntime.sleep(600)",
    )
    job.start()
    assert wait_for(lambda: (job.folder / "ready").exists())
    job.cancel(grace_s=0.3, wait=False)
    # it returned without waiting for the kill: the child (deaf to SIGTERM) is still there
    # until a poll after the grace period sends it, however slowly this machine runs
    assert job.state is JobState.RUNNING and pid_alive(job.pid)
    assert job.wait(timeout=60) is JobState.CANCELLED
    assert not pid_alive(job.pid)


@POSIX_ONLY
def test_grandchild_of_gracefully_stopped_child_is_killed(tmp_path: Path) -> None:
    """The child exits on SIGTERM but its worker ignores it: the worker must not outlive it."""
    job = script_job(
        tmp_path,
        """
import subprocess
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open("grandchild.pid", "w").write(str(child.pid))
time.sleep(600)
""",
    )
    job.start()
    pid_file = job.folder / "grandchild.pid"
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    grandchild = int(pid_file.read_text())
    job.cancel(grace_s=10)
    assert job.state is JobState.CANCELLED
    assert wait_for(lambda: not pid_alive(grandchild), timeout=5)


def test_skip_existing_events_on_resume(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    old = [{"event": "iteration", "iteration": 1}, {"event": "finished", "status": "cancelled"}]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in old))
    job = script_job(
        tmp_path,
        EMIT + "emit('iteration', iteration=2)\nemit('finished', status='completed', error=None)",
        skip_existing_events=True,
    )
    job.start()
    assert job.wait(timeout=20) is JobState.COMPLETED
    assert [e.get("iteration") for e in job.events] == [2, None]
    assert job.finished_event is not None and job.finished_event["status"] == "completed"


# ------------------------------------------------------------------ stop file and Windows
def test_windows_children_get_no_console_window_and_their_own_group() -> None:
    """What Popen is given on Windows (checked here by value; there is no Windows runner)."""
    assert popen_options(windows=True) == {"creationflags": 0x00000200 | 0x08000000}
    if sys.platform == "win32":
        assert CREATE_NEW_PROCESS_GROUP == subprocess.CREATE_NEW_PROCESS_GROUP
        assert CREATE_NO_WINDOW == subprocess.CREATE_NO_WINDOW
    assert popen_options(windows=False) == {"start_new_session": True}


def test_request_stop_without_a_stop_file_does_nothing(tmp_path: Path) -> None:
    job = script_job(tmp_path, "time.sleep(0.1)")
    assert job.request_stop() is False
    assert not list(tmp_path.rglob(STOP_REQUEST_FILE))


def test_a_stop_request_names_the_run_it_was_written_for(tmp_path: Path) -> None:
    """The token goes to the child (environment) and into the stop file, so the child can tell
    a Cancel sent while it started from a stop file an earlier run left behind."""
    stop_file = tmp_path / "job" / "run" / STOP_REQUEST_FILE
    job = script_job(tmp_path, "print(os.environ['" + RUN_TOKEN_ENV + "'])", stop_file=stop_file)
    assert job.run_token and job.env[RUN_TOKEN_ENV] == job.run_token
    job.start()
    assert job.request_stop()  # before the child has looked
    assert job.wait(timeout=30) is JobState.COMPLETED
    assert job.run_token in job.log_tail()
    assert clear_stale_stop_request(stop_file, token=job.run_token) is False
    assert stop_file.is_file()
    other = script_job(tmp_path / "later", "pass", stop_file=stop_file)
    assert other.run_token != job.run_token
    assert clear_stale_stop_request(stop_file, token=other.run_token) is True
    assert not stop_file.exists()
    stop_file.write_text("")  # written by hand, or by an older version: no token
    assert clear_stale_stop_request(stop_file, token="") is True
    assert clear_stale_stop_request(stop_file, token="x") is False  # nothing there


@POSIX_ONLY
def test_cancel_writes_the_stop_file_for_a_child_deaf_to_signals(tmp_path: Path) -> None:
    """Like a Windows child of Slicer, which no console event reaches: the file stops it."""
    job = script_job(
        tmp_path,
        EMIT
        + """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
emit("started", job="train", total=1000)
while not os.path.exists(os.path.join("run", "stop.request")):
    time.sleep(0.02)
emit("checkpoint", iteration=1, path="last.pt", kind="last")
emit("finished", status="cancelled", error=None)
""",
        stop_file=tmp_path / "job" / "run" / STOP_REQUEST_FILE,
    )
    job.start()
    assert wait_for(lambda: any(e["event"] == "started" for e in job.poll() + job.events))
    job.cancel(grace_s=60)
    # it exited by itself (returncode 0): a kill after the grace would make it -9
    assert job.state is JobState.CANCELLED and job.returncode == 0
    assert (job.folder / "run" / STOP_REQUEST_FILE).is_file()


@pytest.mark.slow
def test_stop_file_alone_cancels_a_real_training_run(tmp_path: Path) -> None:
    """A real ``dkuxnet train`` child, no signal: it ends "cancelled" with last.pt saved."""
    pytest.importorskip("torch")
    from tiny import TINY_MODEL

    from dkuxnet.checkpoint import load_checkpoint
    from dkuxnet.config import ModelConfig, TrainConfig
    from dkuxnet.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, n_labeled=2, n_unlabeled=1, n_test=0, shape=(24, 40, 40), seed=3)
    base = TrainConfig.preset("lite")
    config = TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=1, unlabeled_batch=1),
        training=base.training.replace(iterations=500, val_every=1000, checkpoint_every=1000),
    )
    config.save(tmp_path / "config.json")
    folder = tmp_path / "job"
    run = folder / "run"
    args = ["train", "--data", data, "--out", run, "--config", tmp_path / "config.json"]
    job = Job(
        folder,
        dkuxnet_command([*args, "--device", "cpu", "--quiet"]),
        events_path=run / "events.jsonl",
        env=child_environment({"OMP_NUM_THREADS": "1"}),
        stop_file=run / STOP_REQUEST_FILE,
    ).start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.state is JobState.RUNNING:
            if any(e["event"] == "iteration" and e["iteration"] >= 2 for e in job.poll()):
                break
            time.sleep(0.05)
        assert job.state is JobState.RUNNING, job.error_message()
        assert job.request_stop()  # the file only: no signal, no kill deadline
        assert job.wait(timeout=240) is JobState.CANCELLED, job.error_message()
    finally:
        job.cancel(grace_s=1)  # only if the test failed above
    assert job.finished_event is not None and job.finished_event["status"] == "cancelled"
    assert job.returncode == 3  # `dkuxnet train` exit code for a cancelled run
    assert "stop.request found" in job.log_tail(50)
    iteration = load_checkpoint(run / "last.pt")["iteration"]
    assert 2 <= iteration < 500
