"""Rendering helpers for the kefu chart tests (the services themselves: stack.py).

The chart is rendered offline with the Helm v4 SDK that the helm-python-sdk wheel
bundles (no helm binary, no cluster).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from stack import REPO

CHART = REPO / "helm" / "kefu"
PRODUCTION_VALUES = CHART / "values-production.yaml"
RELEASE = "kefu"
NAMESPACE = "kefu"

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


@dataclass
class Rendered:
    """One rendering of the chart: its objects and its NOTES.txt."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def kind_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.objects:
            counts[o["kind"]] = counts.get(o["kind"], 0) + 1
        return dict(sorted(counts.items()))


def load_values_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    """Render the chart as `helm template` would, with `values` over the defaults."""
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(copy.deepcopy(values) if values else None)
        manifests = chart.render(copy.deepcopy(values) if values else None,
                                 name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(values=merged, objects=objects, notes=notes)


def component_of(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels_by_component(r: Rendered) -> dict[str, dict[str, str]]:
    return {component_of(d): d["spec"]["template"]["metadata"]["labels"]
            for d in r.of_kind("Deployment")}


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_env(r: Rendered, deployment: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets through envFrom (later ConfigMaps win)."""
    env: dict[str, str] = {}
    for source in container_of(deployment).get("envFrom", []):
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    return env
