"""The console (smartvlm_jax.console): which lines reach it and which only run.log, and progress as plain
lines (no bar debris) when the output is not a terminal, or as a bar when it is."""

import io
import logging
import warnings

import pytest

from smartvlm_jax import console
from smartvlm_jax.workdir import Workdir


@pytest.fixture
def restore_logging():
    """Leave the process's logging as the test found it (configure replaces the root's handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    project = logging.getLogger(console.PROJECT).level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(console.PROJECT).setLevel(project)
    logging.captureWarnings(False)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_console_rule():
    rule = console.shows_on_console
    info, warning, error = logging.INFO, logging.WARNING, logging.ERROR
    assert rule(_record("smartvlm_jax.train", info), 0)
    assert not rule(_record("smartvlm_jax.train", logging.DEBUG), 0)  # details: run.log only
    assert not rule(_record("smartvlm_jax.towers.registry", info), 0)  # which kernels: a detail
    assert not rule(_record("jax._src.xla_bridge", info), 0)  # "Unable to initialize backend 'tpu'"
    assert not rule(_record("absl", info), 0)  # TFDS's "Load dataset info", orbax's saves
    assert rule(_record("jax._src.xla_bridge", warning), 0)  # a library's warning may need action
    assert not rule(_record("py.warnings", warning), 0)  # Python warnings: chatter
    assert not rule(_record("transformers.tokenization_utils_base", warning), 0)
    assert rule(_record("transformers.tokenization_utils_base", error), 0)
    assert rule(_record("absl", info), 1) and rule(_record("smartvlm_jax.train", logging.DEBUG), 1)
    assert not rule(_record("smartvlm_jax.train", info), -1) and rule(_record("absl", warning), -1)
    assert not rule(_record("smartvlm_jax.train", info), 0, lead=False)  # other processes: quiet
    assert rule(_record("smartvlm_jax.train", warning), 0, lead=False)
    progress = _record(console.PROGRESS_LOGGER, info)
    assert rule(progress, 0, bars=False) and not rule(progress, 0, bars=True)  # a bar shows it


def test_library_noise_goes_to_run_log_only(tmp_path, restore_logging):
    out = io.StringIO()
    lines = console.configure(tmp_path, 0, stream=out)
    logging.getLogger("smartvlm_jax.main").info("before the process index is known")
    lines.set_process(0)
    logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
    logging.getLogger("absl").info("Load dataset info from /w/tfds")
    logging.getLogger("smartvlm_jax.summaries").debug("timing train: 1.00 s")
    logging.getLogger("jax._src.xla_bridge").warning("a GPU may be present but jaxlib has no CUDA")
    warnings.warn("Error writing persistent compilation cache entry", UserWarning, stacklevel=1)
    logging.getLogger("smartvlm_jax.train").info("splits (instance): ...")
    shown = out.getvalue().splitlines()
    assert shown == [
        "before the process index is known",
        "warning: [jax._src.xla_bridge] a GPU may be present but jaxlib has no CUDA",
        "splits (instance): ...",
    ]
    assert lines.run_log == str(Workdir(tmp_path).run_log())
    log = Workdir(tmp_path).run_log().read_text()
    for text in (
        "before the process",
        "Unable to initialize backend",
        "Load dataset info",
        "timing train",
        "Error writing persistent compilation cache",
        "splits (instance)",
    ):
        assert text in log, text


def test_run_log_waits_for_the_workdir_lock_and_a_refused_run_leaves_it_alone(tmp_path, restore_logging):
    """A run's run.log opens once it holds the workdir (Workdir.lock), with the lines before; a run that
    never holds it (refused: another run has the workdir) leaves the other run's log byte for byte."""
    out, wd = io.StringIO(), Workdir(tmp_path)
    lines = console.configure(tmp_path, 0, stream=out)
    logging.getLogger("smartvlm_jax.main").info("command: smartvlm-train")
    lines.set_process(0, wait_for_lock=True)
    logging.getLogger("smartvlm_jax.main").info("JAX on 1 cpu device")
    assert lines.run_log == str(wd.run_log()) and not wd.run_log().exists()
    with wd.lock():
        logging.getLogger("smartvlm_jax.train").info("splits (instance): ...")
    logging.getLogger("smartvlm_jax.train").info("after the lock")
    text = wd.run_log().read_text()
    assert [t in text for t in ("command:", "JAX on", "holding", "splits", "after the lock")] == [True] * 5
    assert text.index("command:") < text.index("JAX on") < text.index("splits")

    logging.shutdown()
    winner = tmp_path / "winner"
    Workdir(winner).run_log().parent.mkdir()
    Workdir(winner).run_log().write_bytes(b"the winner's lines\n")
    Workdir(winner).lock_file.write_text('{"pid": 1, "host": "elsewhere"}')  # held by another run
    loser = console.configure(winner, 0, stream=out)
    loser.set_process(0, wait_for_lock=True)
    logging.getLogger("smartvlm_jax.main").info("JAX on 1 cpu device")
    logging.getLogger("smartvlm_jax").error("the workdir is in use by another run")
    logging.shutdown()
    assert Workdir(winner).run_log().read_bytes() == b"the winner's lines\n"
    assert out.getvalue().endswith("error: the workdir is in use by another run\n")


def test_other_processes_keep_their_own_log_and_print_warnings_only(tmp_path, restore_logging):
    out = io.StringIO()
    console.configure(tmp_path, 0, stream=out).set_process(1)
    logging.getLogger("smartvlm_jax.train").info("splits (instance): ...")
    logging.getLogger("smartvlm_jax.train").warning("a bad row")
    assert out.getvalue() == "warning: a bad row\n"
    assert "splits (instance)" in Workdir(tmp_path).run_log(1).read_text()
    assert not Workdir(tmp_path).run_log().exists()


def test_plain_lines_when_not_a_terminal(tmp_path, restore_logging):
    """CI, nohup, SLURM: periodic plain lines and a closing line, no carriage return or cursor move; the
    rate and ETA leave the compiling step out."""
    out = io.StringIO()
    console.configure(tmp_path, 0, stream=out).set_process(0)
    assert not console.interactive(out)
    clock = Clock()
    progress = console.Progress("epoch 1/2", 100, "steps", warmup_name="compiling", every_s=10, clock=clock)
    clock.t += 30  # the first step compiles
    progress.update(1, warmup=True, postfix="loss 2.5")
    for _ in range(99):
        clock.t += 0.5  # then 2 steps/s
        progress.update(1, postfix="loss 2.0")
    progress.close("loss 2.0, val S_acc 10.0 %, new best")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "epoch 1/2: 1/100 steps, loss 2.5"  # 30 s in: compiled, no rate yet
    assert lines[1] == "epoch 1/2: 21/100 steps, 2 steps/s, ETA 40 s, loss 2.0"  # 10 s later
    assert len(lines) == 6  # every 10 s, then the closing line
    assert lines[-1] == (
        "epoch 1/2: 100 steps in 79.5 s (2 steps/s after 30.0 s compiling); "
        "loss 2.0, val S_acc 10.0 %, new best"
    )
    assert lines[-1] in Workdir(tmp_path).run_log().read_text()


def test_one_pipelined_unit_after_the_warmup_gives_no_rate(restore_logging):
    """A resumed extraction's last partial batch was mostly computed while the warm-up batch was waited
    for: its interval alone read "7893 samples/s". Two timed updates make a rate; one does not."""
    clock = Clock()
    progress = console.Progress(  # resumed: 640 samples in the store's marked shards
        "features train", 816, "samples", initial=640, warmup_name="on the first batch", clock=clock
    )
    clock.t += 1.0
    progress.update(128, warmup=True)  # the first batch: compiles
    clock.t += 0.003
    progress.update(24)
    assert progress.rate() is None
    assert progress.closing_line() == "features train: 152 of 792 samples in 1.0 s (640 done before)"
    clock.t += 0.5
    progress.update(24)
    assert progress.rate() == pytest.approx(48 / 0.503)


def test_a_bar_in_a_terminal(restore_logging):
    out = io.StringIO()
    clock = Clock()
    progress = console.Progress("features train", 4, "samples", bars=True, stream=out, clock=clock)
    progress.status("compiling")
    progress.update(1, warmup=True)
    for _ in range(3):
        progress.update(1)
    progress.close("done")
    final = out.getvalue().split("\r")[-1]
    assert final.startswith("features train: 100%") and "4/4" in final and final.rstrip().endswith("done]")
    assert not progress.enabled  # closed: further updates do nothing
    progress.update(1)


def test_transient_and_disabled_stages(restore_logging, tmp_path):
    out = io.StringIO()
    console.configure(tmp_path, 0, stream=out).set_process(0)
    assert list(console.Progress("val", 3, "batches", leave=False).iterate("abc")) == ["a", "b", "c"]
    assert list(console.Progress("val", 3, "batches", enabled=False).iterate("abc")) == ["a", "b", "c"]
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0 s"), (42, "42 s"), (425, "7 min 5 s"), (7380, "2 h 03 min"), (float("nan"), "?")],
)
def test_format_seconds(seconds, text):
    assert console.format_seconds(seconds) == text


def _log_from_a_worker(routing):  # runs in a spawned process: nothing of the parent's logging set-up
    routing(1, 2)
    logging.getLogger("smartvlm_jax.data.pipeline").info("decoded in a worker")
    logging.getLogger("smartvlm_jax.data.pipeline").debug("a worker's detail")
    logging.getLogger("grain").warning("a library's warning in a worker")


def test_worker_processes_inherit_the_log_routing(tmp_path, capfd):
    import multiprocessing

    stream = io.StringIO()
    lines = console.configure(tmp_path, 0, stream=stream, bars=False)
    try:
        lines.set_process(0)
        routing = console.worker_routing()
        assert routing == console.WorkerRouting(0, True, str(tmp_path / "run.log"))
        worker = multiprocessing.get_context("spawn").Process(target=_log_from_a_worker, args=(routing,))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
    finally:
        lines.log_file.close()
        logging.getLogger().removeHandler(lines.log_file)
    run_log = (tmp_path / "run.log").read_text()
    for text in ("decoded in a worker", "a worker's detail", "a library's warning in a worker"):
        assert text in run_log
    printed = capfd.readouterr().err.splitlines()  # the worker's console: the console's rule
    assert "decoded in a worker" in printed and "warning: [grain] a library's warning in a worker" in printed
    assert not any("detail" in line for line in printed)


def test_evaluate_and_predict_print_warnings_as_the_other_commands(restore_logging, capsys):
    """absl's ``logging.basicConfig`` (a library logging while imported) would print "WARNING:name:...";
    the commands replace it, but leave a caller's own handlers alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    mine = logging.StreamHandler(io.StringIO())
    root.addHandler(mine)
    console.configure_command()
    assert root.handlers == [mine]  # the caller's routing stands
    root.removeHandler(mine)
    logging.basicConfig()
    console.configure_command()
    logging.getLogger("smartvlm_jax.sources").warning("data.root /d: its rows changed")
    logging.getLogger("smartvlm_jax.sources").info("an INFO line of the project")
    assert capsys.readouterr().err == "warning: data.root /d: its rows changed\n"
