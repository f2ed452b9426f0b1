"""``python -m engine CONFIG.json`` — run one training run described by a RunConfig JSON.

Under torchrun (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT) this process
is one rank. Started by hand with a world size above 1, it launches that many ranks on this
machine itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.config import ConfigError, RunConfig
from engine.launch import engine_command, launch
from engine.runner import EXIT_CONFIG, main_rank
from engine.validate import validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="RunConfig JSON file")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds, when launching ranks"
    )
    args = parser.parse_args(argv)
    try:
        cfg = validate(RunConfig.from_json_file(args.config))
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if "RANK" in os.environ or cfg.parallel.n_ranks == 1:
        code = main_rank(cfg)
    else:
        log_dir = Path(cfg.out).parent if cfg.out else Path(".")
        result = launch(
            engine_command(args.config),
            nproc=cfg.parallel.n_ranks,
            log_dir=log_dir,
            timeout_s=args.timeout,
        )
        code = 0 if result.ok else 1
        print(f"ranks exited {result.returncodes}; logs in {log_dir}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # exit without interpreter teardown: after destroy_process_group, gloo/FSDP workers were seen
    # aborting ("terminate called without an active exception") in normal shutdown
    os._exit(code)


if __name__ == "__main__":
    main()
