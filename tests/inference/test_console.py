import logging

from petseg.inference.timing import StageTimer


def test_stage_timer_logs_one_line_per_stage_and_quiet_keeps_it_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="petseg")
    loud, quiet = StageTimer(prefix="a: "), StageTimer(prefix="b: ", quiet=True)
    for timer in (loud, quiet):
        with timer.stage("read"):
            pass
        with timer.stage("read"):
            pass
    levels = {(r.getMessage()[:2], r.levelno) for r in caplog.records if "read" in r.getMessage()}
    assert levels == {("a:", logging.INFO), ("b:", logging.DEBUG)}
    assert set(loud.seconds) == {"read"}
    assert loud.total >= 0.0
