"""Write tests/fixtures/export/<format>/ from the stored worked plan (worked_plan.json).

The worked plan is the README's (Llama-3.1-70B, 16 x H100, ISL 4000, OSL 500, TTFT 1000 ms,
TPOT 20 ms), stored in the planner's JSON form with its Pareto frontiers left out. Run
``python -m tools.write_export_fixtures`` after changing the export; tests/unit/test_export.py
fails while the checked-in files differ from what the export writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pdplanner.planner.export import EXPORT_FORMATS, PlanExport, export_plan
from pdplanner.planner.serialize import plan_request_from_json, plan_result_from_json

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "export"


def worked_exports() -> dict[str, PlanExport]:
    """The export of the worked plan in every format."""
    stored = json.loads((FIXTURES / "worked_plan.json").read_text())
    request = plan_request_from_json(stored["request"])
    result = plan_result_from_json(stored["result"])
    return {fmt: export_plan(request, result, fmt, stored["name"]) for fmt in EXPORT_FORMATS}


def main() -> None:
    for fmt, export in worked_exports().items():
        folder = FIXTURES / fmt
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for f in export.files:
            (folder / f.path).write_text(f.content)
        print(f"{folder}: {', '.join(f.path for f in export.files)}")


if __name__ == "__main__":
    main()
