"""VLM efficiency methods, side by side: the app's entry point. It only composes.

    python app.py                       serve the web UI (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)
    python app.py compare --image PATH --prompt TEXT [--methods a,b] [--keep R] [--json]   headless run
    python app.py eval --data FILE.jsonl [--methods a,b] [--keep R] [--json]   accuracy A/B on labelled data
    python app.py methods                                               the method table (markdown)
    python app.py calibrate-shortv [--model M] [--data FILE.jsonl]      rank layers for ShortV (stored per model)
    python app.py train-tiny [--out DIR] [--seed N] [--init V1_DIR]     train the built-in model (stages 1-8)
    python app.py worker [--redis URL] [--device DEV] [--model M]       serve runs from Redis (one per GPU)
"""

from __future__ import annotations

import os
import sys

# Before torch is imported: OpenMP threads that spin while waiting make a shared 2-core box 10x slower. Training owns
# the machine: there spinning threads hand work over faster (a two-thread train_v2 stage, 60 steps: 75 s against 103 s).
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if sys.argv[1:2] == ["train-tiny"] else "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def serve() -> None:
    from backends.pools import make_pool
    from backends.settings import Settings
    from backends.store import open_store
    from ui.demo import build_demo, launch_options, queue_options

    settings = Settings.from_env()
    pool = make_pool(settings)
    demo = build_demo(pool, settings, open_store(settings))  # saved comparisons: permalinks, recent list
    # One comparison per worker at a time; the rest wait in gradio's bounded queue (the page shows their place).
    demo.queue(**queue_options(settings, pool.workers)).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=int(settings.max_upload_mb * 2**20),  # bytes: gradio parses "1.5mb" as a bad unit
        **launch_options(),
    )


def main(argv: list[str]) -> int:
    cmd, rest = (argv[0], argv[1:]) if argv else ("serve", [])
    if cmd in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if cmd == "serve":
        serve()
        return 0
    if cmd == "compare":
        from backends.cli import compare_main

        return compare_main(rest)
    if cmd == "methods":  # the README's method table, from the registry
        from methods.registry import docs_table

        print(docs_table())
        return 0
    if cmd == "worker":
        from backends.worker import main as worker_main

        return worker_main(rest)
    if cmd == "eval":
        from backends.evaluate import main as eval_main

        return eval_main(rest)
    if cmd == "calibrate-shortv":
        from backends.calibrate import main as calibrate_main

        return calibrate_main(rest)
    if cmd == "train-tiny":
        from backends.tiny.pipeline import pipeline

        return pipeline(rest)
    print(f"error: unknown command {cmd!r}; see python app.py --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
