"""The subset of kustomize (v5) semantics that deploy/k8s uses, to render overlays without the
kustomize binary (no registry CI reaches ships a current one; Debian's kubernetes-client 1.20
predates the `labels` field). `test_k8s.py` compares this renderer with `kubectl kustomize`
wherever kubectl is installed, so the subset cannot drift from the real semantics unnoticed.

Supported: `resources` (files and kustomization folders), `namespace`, `labels` (pairs, without
includeSelectors / includeTemplates), `images` (newName / newTag on pod-template containers) and
`patches` given by `path` (strategic merge patches, list items merged by `name`). Any other field
fails the render rather than being silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
# Kinds that are not namespaced among those deploy/k8s uses.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"}


class KustomizeError(ValueError):
    pass


def load_documents(path: Path) -> list[Resource]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for document in documents:
        if not isinstance(document, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return documents


def key(resource: Resource) -> tuple[str, str]:
    return (str(resource["kind"]), str(resource["metadata"]["name"]))


def render(folder: Path) -> list[Resource]:
    """The resources `kustomize build folder` would emit (order not guaranteed)."""
    kustomization_path = folder / "kustomization.yaml"
    if not kustomization_path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    kustomization = yaml.safe_load(kustomization_path.read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_path}: unsupported fields {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kustomization_path}: kind must be Kustomization")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            resources.extend(render(target))
        elif target.is_file():
            if not target.is_relative_to(folder.resolve()):
                raise KustomizeError(f"{kustomization_path}: {entry} is not in or below {folder}")
            resources.extend(load_documents(target))
        else:
            raise KustomizeError(f"{kustomization_path}: resource {entry} does not exist")
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if key(resource) in seen:
            raise KustomizeError(f"{kustomization_path}: duplicate resource {key(resource)}")
        seen.add(key(resource))

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kustomization_path}: only `patches: - path:` is supported")
        for patch in load_documents(folder / patch_entry["path"]):
            matches = [r for r in resources if key(r) == key(patch)]
            if len(matches) != 1:
                raise KustomizeError(f"{patch_entry['path']}: patch target {key(patch)} not found")
            index = resources.index(matches[0])
            resources[index] = strategic_merge(matches[0], patch)

    for label_entry in kustomization.get("labels", []):
        if set(label_entry) != {"pairs"}:
            raise KustomizeError(f"{kustomization_path}: labels support `pairs` only")
        for resource in resources:
            labels = resource["metadata"].setdefault("labels", {})
            labels.update(label_entry["pairs"])

    for image in kustomization.get("images", []):
        for resource in resources:
            for container in pod_containers(resource):
                set_image(container, image)

    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources


def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key; lists of named maps merge by `name`; other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for name, value in patch.items():
            merged[name] = strategic_merge(base[name], value) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = copy.deepcopy(base)
        by_name = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in by_name:
                index = by_name[item["name"]]
                merged_list[index] = strategic_merge(merged_list[index], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    spec = resource.get("spec", {})
    template = spec.get("template", {}) if isinstance(spec, dict) else {}
    pod = template.get("spec") if isinstance(template, dict) else None
    return pod if isinstance(pod, dict) else None


def pod_containers(resource: Resource) -> list[dict[str, Any]]:
    pod = pod_spec(resource)
    if pod is None:
        return []
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def set_image(container: dict[str, Any], image: dict[str, str]) -> None:
    current = str(container.get("image", ""))
    name = current.split("@")[0].rsplit(":", 1)[0] if ":" in current else current
    if name != image["name"]:
        return
    new_name = image.get("newName", name)
    tag = image.get("newTag")
    container["image"] = f"{new_name}:{tag}" if tag else new_name
