"""The lab's work model: duty files written from two threads never collide."""

import threading
from pathlib import Path

from lab.work import WorkModel, duty_for


def test_duty_grows_with_rate_and_cost_and_is_capped_at_one_core() -> None:
    assert duty_for(100, 1.0) == 0.1
    assert duty_for(100, 2.0) > duty_for(100, 1.0)
    assert duty_for(10_000, 1.0) == 1.0


def test_set_cost_while_the_model_thread_writes_never_loses_a_file(tmp_path: Path) -> None:
    files = {h: tmp_path / f"{h}.duty" for h in ("a-s1", "b-s1")}
    model = WorkModel(files, packets=lambda host: 0, interval_s=0.0005).start()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(2000):
                model.set_cost(dict.fromkeys(files, float(i % 3)))
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=hammer)
    t.start()
    t.join()
    model.stop()
    assert errors == []
    assert all(f.exists() for f in files.values())
