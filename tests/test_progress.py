"""Progress bars in a log: one line per bar, no cursor movement."""

import io

from dkvb_jax._progress import progress_bar


def test_nested_bars_write_one_line_each_to_a_file():
    log = io.StringIO()  # not a terminal, like a log file or CI
    outer = progress_bar(total=3, desc="outer", file=log)
    for _ in range(3):
        for _ in progress_bar(range(50), desc="inner", file=log):
            pass
        outer.update()
    outer.close()
    text = log.getvalue()
    assert "\x1b[A" not in text  # no cursor-up between nested bars
    lines = text.split("\n")[:-1]
    assert len(lines) == 4  # three inner bars and the outer one, each finished
    finals = [line.split("\r")[-1] for line in lines]  # what a log viewer shows last
    assert [f.split(":")[0] for f in finals] == ["inner"] * 3 + ["outer"]
    assert all("100%" in f for f in finals)
    assert text.count("\r") == 8  # each bar drawn twice: when it starts and when it ends
