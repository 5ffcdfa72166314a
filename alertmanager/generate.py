"""Generate Alertmanager's config and Grafana's notification provisioning from routing.yml.

Also the Kubernetes package's AlertmanagerConfig: it is one more rendering of this spec (and
its mistakes are this spec's, exit 2 naming the key), so it is written here, by `make
alerting`, rather than by deploy/kubernetes/generate.py, which copies the rule files and
dashboards and never reads the spec.

    python alertmanager/generate.py          # write
    python alertmanager/generate.py --check  # exit 1 if a committed file differs (CI)

Exit 2, with one line naming the key, when the spec has a mistake.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render_alertmanager  # noqa: E402 - after the path above
import render_alertmanagerconfig  # noqa: E402
import render_grafana  # noqa: E402
from spec import ROOT, SPEC, Spec, SpecError, load  # noqa: E402

ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "grafana" / "provisioning" / "alerting"


def outputs(spec: Spec) -> dict[Path, str]:
    return {
        ALERTMANAGER: render_alertmanager.render(spec),
        GRAFANA / "policies.yaml": render_grafana.policies(spec),
        GRAFANA / "contact-points.yaml": render_grafana.contact_points(spec),
        GRAFANA / "mute-timings.yaml": render_grafana.mute_timings(spec),
        render_alertmanagerconfig.PATH: render_alertmanagerconfig.render(spec),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    parser.add_argument(
        "--spec", type=Path, default=SPEC, help="the routing spec (default: alertmanager/routing.yml)"
    )
    args = parser.parse_args(argv)
    try:
        # Rendering checks too: what one target cannot express (the AlertmanagerConfig).
        files = outputs(load(args.spec))
    except SpecError as error:
        print(f"{args.spec.name}: {error}", file=sys.stderr)
        return 2
    drift = False
    for path, text in files.items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        rel = str(path.relative_to(ROOT))
        if args.check:
            drift = True
            sys.stdout.writelines(
                difflib.unified_diff(current.splitlines(True), text.splitlines(True), rel, rel)
            )
            print(f"{rel}: differs from what alertmanager/generate.py produces; run `make alerting`")
        else:
            path.write_text(text)
            print(f"wrote {rel}")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
