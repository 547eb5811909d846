"""metrics.jsonl across a resume: records past the resumed step are dropped, in place."""

import json

from galr_jax.training.logs import METRICS_FILE, MetricLogger, read_metrics


def _run(workdir, start, steps):
    logger = MetricLogger(workdir, start, tensorboard=False)
    for step in steps:
        logger.write(step, {"loss": float(step)})
    logger.close()


def test_resume_drops_the_records_past_its_step_and_appends(tmp_path):
    _run(tmp_path, 0, [10, 20, 30])
    _run(tmp_path, 20, [30, 40])  # a crash after step 30's record, resumed from step 20
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 30, 40]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    _run(tmp_path, 0, [10])
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 20, "lo')
    _run(tmp_path, 10, [20])
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]


def test_a_fresh_run_reads_nothing(tmp_path):
    assert read_metrics(tmp_path) == []
