"""Output piped into a reader that stops early (``xmig ... | head``) ends quietly."""

from __future__ import annotations

import pytest

from tests.xmig_process import xmig_popen


@pytest.mark.parametrize("args", [["schema"], ["run", "--guest", "examples/idle.yaml", "--no-dashboard"]])
def test_a_reader_that_closes_the_pipe_gets_no_error_line_or_traceback(args):
    proc = xmig_popen(*args, text=False)
    proc.stdout.close()                    # the reader went away before the first line
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "error" not in err and "Broken pipe" not in err, err
    assert rc != 0                         # the output was not all delivered
