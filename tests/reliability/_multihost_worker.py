"""One process of the two-process training test (run by multihost_test.py, not by pytest).

Usage: python _multihost_worker.py PROCESS_ID PORT WORKDIR SETTINGS_JSON. Each process has 2 CPU
devices; the (data=4) mesh spans both processes, gradients are all-reduced over gloo, and every
process reads its own share of the data. It trains ``stop_after`` steps (checkpoint), then
resumes from that checkpoint to ``num_steps`` in the same process. With ``stop_after`` None it
trains once (the preemption test sends SIGTERM to one process meanwhile).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax

from lcm import config as config_lib
from lcm.train import loop


def main(process_id: int, port: int, workdir: str, settings: dict) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    stop_after = settings.pop("stop_after")
    config.update_from_flattened_dict(settings)
    log = lambda s: print(f"[{process_id}] {s}", flush=True)  # noqa: E731
    if stop_after is None:
        last = loop.train(config, workdir, log=log)
        print(f"[{process_id}] devices={jax.device_count()} stopped at {last['step']}")
        return
    first = loop.train(config, workdir, log=log, stop_after=stop_after)
    last = loop.train(config, workdir, log=log)
    print(f"[{process_id}] devices={jax.device_count()} steps {first['step']} then {last['step']}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
