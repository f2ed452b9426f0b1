"""``python -m tests.rank_probe WHAT``: a rank for launcher tests. Prints what a rank is given
(working directory, RANK, arguments), then ends as WHAT says: ``exit:N`` exits with N,
``signal:N`` kills itself with signal N, ``sleep:S`` sleeps S seconds, ``raise`` raises."""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":
    what = sys.argv[1]
    print(json.dumps({"cwd": os.getcwd(), "rank": os.environ.get("RANK"), "argv": sys.argv[1:]}))
    if what.startswith("exit:"):
        sys.exit(int(what.split(":")[1]))
    if what.startswith("signal:"):
        os.kill(os.getpid(), int(what.split(":")[1]))
    if what.startswith("sleep:"):
        time.sleep(float(what.split(":")[1]))
        sys.exit(0)
    raise RuntimeError("the probe was asked to fail")
