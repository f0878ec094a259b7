"""Renders and lints the Helm chart with real Helm (helm-python-sdk bundles Helm v4), offline.

  chart.py render CHART RELEASE NAMESPACE [VALUES.yaml ...]   -> JSON {template path: manifest}
  chart.py lint CHART [VALUES.yaml ...]                       -> JSON lint report
Values files are merged left to right, as `helm -f a.yaml -f b.yaml` does. A render error is
printed on stderr with exit status 2.
"""
import json
import sys

from helm_python.chart import Chart, lint, values_from_yaml


def merged(files):
    out = {}

    def merge(base, over):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:
                base[k] = v

    for f in files:
        with open(f) as fh:
            merge(out, values_from_yaml(fh.read()) or {})
    return out


def main():
    cmd, chart = sys.argv[1], sys.argv[2]
    if cmd == "render":
        release, namespace, files = sys.argv[3], sys.argv[4], sys.argv[5:]
        try:
            out = Chart.load(chart).render(merged(files), name=release, namespace=namespace)
        except Exception as e:  # the Helm error text is what the test shows
            print(e, file=sys.stderr)
            sys.exit(2)
        json.dump(out, sys.stdout)
    elif cmd == "lint":
        json.dump(lint(chart, merged(sys.argv[3:]), strict=True), sys.stdout)
    else:
        sys.exit(f"unknown command {cmd}")


main()
