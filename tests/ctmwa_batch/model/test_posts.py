"""The decoding pool under a host whose main script must not run again (an Airflow task's `airflow` command)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SPAWNING_SCRIPT = """
import sys
if __name__ == "__mp_main__":
    raise SystemExit("the main script ran again in a spawned child")  # what `airflow` does in a task's child
import io, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from PIL import Image
from ctmwa_batch.model.posts import ImageDecoder
from ctmwa_batch.model.preprocess import ImageSpec

if sys.argv[1] == "decoder":
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG")
    with ImageDecoder(ImageSpec(size=16, resize_shortest_edge=16), workers=2) as decoder:
        pixels, ok, reasons = decoder.result(decoder.submit([buf.getvalue(), b"junk", None] * 8))
    print("decoded", pixels.shape, int(ok.sum()), int(pixels[0, 8, 8, 0] > 150))
else:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        print("result", pool.submit(abs, -3).result())
print("main file kept", __file__.endswith("main_script.py"))
"""


def _run(tmp_path, mode):
    script = tmp_path / "main_script.py"
    script.write_text(SPAWNING_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env, timeout=120)


def test_decoder_workers_do_not_rerun_the_main_script(tmp_path):
    proc = _run(tmp_path, "decoder")
    assert proc.returncode == 0, proc.stderr
    assert "decoded (24, 16, 16, 3) 8 1" in proc.stdout and "main file kept True" in proc.stdout


def test_a_plain_spawn_pool_would_break_there(tmp_path):
    # the hazard the decoder guards against is real: a plain spawn pool re-runs the script and breaks
    proc = _run(tmp_path, "plain")
    assert proc.returncode != 0 and "BrokenProcessPool" in proc.stderr


DAEMON_SCRIPT = """
import io, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
from PIL import Image
from ctmwa_batch.model.posts import ImageDecoder
from ctmwa_batch.model.preprocess import ImageSpec

def decode(queue):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buf, "JPEG")
    with ImageDecoder(ImageSpec(size=16, resize_shortest_edge=16), workers=1) as decoder:
        pixels, ok, reasons = decoder.result(decoder.submit([buf.getvalue(), b"junk"] * 4))
    queue.put(f"decoded {pixels.shape} {int(ok.sum())} {int(pixels[0, 8, 8, 1] > 150)} daemon {multiprocessing.current_process().daemon}")

def plain(queue):
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            queue.put(f"result {pool.submit(abs, -3).result()}")
    except AssertionError as e:
        queue.put(f"refused: {e}")

if __name__ == "__main__":
    # a daemonic child started by billiard, as Celery's prefork pool starts them (an Airflow task process forked
    # below one inherits its multiprocessing state)
    import billiard

    ctx = billiard.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=decode if sys.argv[1] == "decoder" else plain, args=(queue,), daemon=True)
    child.start()
    print(queue.get(timeout=60))
    child.join(30)
"""


def _run_daemonic(tmp_path, mode):
    script = tmp_path / "daemon_script.py"
    script.write_text(DAEMON_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env, timeout=120)


def test_decoder_workers_start_under_a_celery_pool_child(tmp_path):
    # a shard scored on a Celery worker: the task process carries the state of Celery's (billiard's) pool child
    pytest.importorskip("billiard")  # Celery's process library (the `cluster` extra)
    proc = _run_daemonic(tmp_path, "decoder")
    assert proc.returncode == 0, proc.stderr
    assert "decoded (8, 16, 16, 3) 4 1 daemon True" in proc.stdout, proc.stdout + proc.stderr


def test_a_plain_pool_is_refused_under_a_celery_pool_child(tmp_path):
    pytest.importorskip("billiard")
    proc = _run_daemonic(tmp_path, "plain")
    assert "refused: daemonic processes are not allowed to have children" in proc.stdout, proc.stdout + proc.stderr
