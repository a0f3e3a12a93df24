"""Draw the README's screenshots of `hse ui` (docs/ui-*.png).

    python docs/ui_screenshots.py

On a private embedded server: real workers run a small grid of the test Study (plus a
failing run, and a slow one still running when the pictures are taken), an Optuna study
gets a few trials, and the system's headless chromium (through Playwright) photographs
each page.
"""
from __future__ import annotations

import math
import sys
import threading
import time
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "benchmarks"))

from _common import STUDY, TASKS, embedded_server, workers  # noqa: E402

from hyperspace_explorer.queue import RunQueue  # noqa: E402

PAGES = {"overview": "/", "workers": "/workers", "runs": "/runs?task=toy",
         "results": "/tasks/toy/results", "tuning": "/tuning"}


def fill(q: RunQueue) -> dict[str, str]:
    import optuna

    ids = q.submit_grid("toy", {"model": {"className": "Linear"}, "noise": 0.05},
                        {"model.lr": [0.05, 0.1, 0.2], "epochs": [2, 4, 6]}, seeds=3)
    failed = q.submit("toy", {"model": {"className": "Forest"}, "behaviour": "raise"},
                      max_attempts=1)
    q.wait(ids + failed, progress=False)
    slow = q.submit("toy", {"model": {"className": "Forest", "n_trees": 50},
                            "behaviour": "sleep", "duration": 600})
    while not any(w.get("current_run") == slow[0] for w in q.workers()):
        time.sleep(0.2)  # its worker's next heartbeat shows it
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="toy-tpe", storage=q.store.optuna_storage(),
                                direction="minimize", sampler=optuna.samplers.TPESampler(seed=1))
    study.optimize(lambda t: (t.suggest_float("lr", 1e-3, 1, log=True) - 0.1) ** 2
                   + 0.1 * math.sin(5 * t.suggest_int("layers", 1, 6)), n_trials=30)
    return {"run": ids[0], "compare": f"/compare?ids={ids[0]}&ids={ids[-1]}",
            "failed": failed[0]}


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from hyperspace_explorer.web.app import create_app

    warnings.simplefilter("ignore")
    with embedded_server() as uri, RunQueue(uri, "screens", TASKS, study_dir=STUDY) as q:
        with workers(uri, "screens", 3, "--idle-exit", "600"):
            ids = fill(q)
            server = uvicorn.Server(uvicorn.Config(create_app(q), host="127.0.0.1", port=0,
                                                   log_level="warning"))
            threading.Thread(target=server.run, daemon=True).start()
            while not server.started:
                time.sleep(0.05)
            base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            pages = {**PAGES, "run": f"/runs/{ids['run']}", "compare": ids["compare"],
                     "confirm": f"/runs/{ids['failed']}/requeue"}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--enable-unsafe-swiftshader"],
                                             ignore_default_args=["--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                for name, path in pages.items():
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    if page.query_selector('script[id^="figure-"]'):  # figures to draw
                        page.wait_for_selector(".plot .main-svg")
                    page.screenshot(path=str(DOCS / f"ui-{name}.png"), full_page=name != "run")
                    print(f"docs/ui-{name}.png")
                browser.close()
            server.should_exit = True


if __name__ == "__main__":
    main()
