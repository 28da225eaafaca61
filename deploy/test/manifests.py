#!/usr/bin/env python3
"""Helpers for deploy/test/validate: split rendered manifests by schema
source, compare a Helm rendering with a kustomize one, and write JSON for
core/tests/deploy_manifests.rs.

    manifests.py split RENDERED.yaml OUTDIR     # builtin.yaml + crd/<kind>-N.yaml
    manifests.py compare HELM.yaml KUSTOMIZE.yaml
    manifests.py json RENDERED.yaml OUT.json
    manifests.py crd-component KUSTOMIZATION.yaml TAG
"""

import json
import os
import re
import sys

import yaml

# Kinds that come from CRDs (not in kubernetes-validate's schemas): their
# vendored schema under deploy/test/schemas/.
CRD_SCHEMAS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): "volumesnapshotclass.json",
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): "volumesnapshot.json",
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshotClass"): "volumegroupsnapshotclass.json",
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshot"): "volumegroupsnapshot.json",
}
# Built-in kinds that are also checked against a vendored schema, written
# from the published field list, on top of kubernetes-validate.
EXTRA_SCHEMAS = {
    ("storage.k8s.io/v1", "VolumeAttributesClass"): "volumeattributesclass.json",
}
# Labels only Helm adds; everything else must agree between the chart and
# the kustomize manifests.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance")


class ManifestError(Exception):
    """A rendered file that cannot be used."""


def load(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ManifestError(f"{path}: document {i} is not a Kubernetes object")
        if not doc.get("metadata", {}).get("name"):
            raise ManifestError(f"{path}: {doc['kind']} document {i} has no name")
    return docs


def key(doc):
    meta = doc["metadata"]
    return (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])


def split(rendered, outdir):
    docs = load(rendered)
    os.makedirs(os.path.join(outdir, "crd"), exist_ok=True)
    builtin = []
    counts = {}
    for doc in docs:
        kind_key = (doc["apiVersion"], doc["kind"])
        schema = CRD_SCHEMAS.get(kind_key) or EXTRA_SCHEMAS.get(kind_key)
        if kind_key not in CRD_SCHEMAS:
            builtin.append(doc)
        if schema:
            n = counts.get(schema, 0)
            counts[schema] = n + 1
            name = f"{schema[:-len('.json')]}-{n}.yaml"
            with open(os.path.join(outdir, "crd", name), "w", encoding="utf-8") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
    with open(os.path.join(outdir, "builtin.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    # One line per schema: "<schema file> <instance files...>", for the shell.
    with open(os.path.join(outdir, "crd.list"), "w", encoding="utf-8") as f:
        for schema in sorted(counts):
            stem = schema[: -len(".json")]
            files = [os.path.join(outdir, "crd", f"{stem}-{i}.yaml") for i in range(counts[schema])]
            f.write(" ".join([schema] + files) + "\n")
    print(f"{rendered}: {len(builtin)} built-in objects, {sum(counts.values())} checked against vendored schemas")


def normalized(doc):
    doc = json.loads(json.dumps(doc))
    labels = doc.get("metadata", {}).get("labels")
    if labels is not None:
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
        if not labels:
            del doc["metadata"]["labels"]
    return doc


def differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}"
            if k not in a:
                yield f"{sub}: only in kustomize"
            elif k not in b:
                yield f"{sub}: only in helm"
            else:
                yield from differences(a[k], b[k], sub)
    elif isinstance(a, list) and isinstance(b, list) and named(a) and named(b):
        # Containers, volumes, env, ports, mounts: Kubernetes merges these by
        # name, and kustomize's strategic merge may order them differently.
        yield from differences({x["name"]: x for x in a}, {y["name"]: y for y in b}, path)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: helm has {len(a)} items, kustomize {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b or type(a) is not type(b):
        yield f"{path}: helm {a!r} != kustomize {b!r}"


def named(items):
    names = [x.get("name") if isinstance(x, dict) else None for x in items]
    return bool(items) and None not in names and len(set(names)) == len(names)


def compare(helm_path, kustomize_path):
    helm = {key(d): normalized(d) for d in load(helm_path)}
    kust = {key(d): normalized(d) for d in load(kustomize_path)}
    problems = []
    for k in sorted(set(helm) - set(kust)):
        problems.append(f"{'/'.join(k)}: only in the helm rendering")
    for k in sorted(set(kust) - set(helm)):
        problems.append(f"{'/'.join(k)}: only in the kustomize rendering")
    for k in sorted(set(helm) & set(kust)):
        for d in differences(helm[k], kust[k]):
            problems.append(f"{'/'.join(k)}{d}")
    if problems:
        print(f"{helm_path} and {kustomize_path} differ:")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"{helm_path} == {kustomize_path} ({len(helm)} objects)")
    return 0


def to_json(rendered, out):
    with open(out, "w", encoding="utf-8") as f:
        json.dump(load(rendered), f, indent=1, sort_keys=True)


# The CRD files of external-snapshotter's group snapshot API, in its
# client/config/crd directory.
GROUP_SNAPSHOT_CRDS = (
    "groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml",
    "groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml",
    "groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml",
)


def crd_component(path, tag):
    """The CRD component lists exactly the group snapshot CRDs of one
    external-snapshotter release (it is fetched at apply time, so it is
    checked here instead of rendered)."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if doc.get("kind") != "Component":
        raise ManifestError(f"{path}: kind is {doc.get('kind')!r}, not Component")
    pattern = re.compile(
        r"^https://raw\.githubusercontent\.com/kubernetes-csi/external-snapshotter/"
        r"(?P<tag>[^/]+)/client/config/crd/(?P<file>[^/]+)$"
    )
    found = []
    for resource in doc.get("resources", []):
        m = pattern.match(resource)
        if not m:
            raise ManifestError(f"{path}: {resource} is not an external-snapshotter CRD file")
        if m["tag"] != tag:
            raise ManifestError(f"{path}: {resource} is pinned to {m['tag']}, not {tag}")
        found.append(m["file"])
    if sorted(found) != sorted(GROUP_SNAPSHOT_CRDS):
        raise ManifestError(f"{path}: lists {found}, expected {list(GROUP_SNAPSHOT_CRDS)}")
    print(f"{path}: the {len(found)} group snapshot CRDs of external-snapshotter {tag}")


def main(argv):
    try:
        if len(argv) == 4 and argv[1] == "split":
            split(argv[2], argv[3])
            return 0
        if len(argv) == 4 and argv[1] == "compare":
            return compare(argv[2], argv[3])
        if len(argv) == 4 and argv[1] == "json":
            to_json(argv[2], argv[3])
            return 0
        if len(argv) == 4 and argv[1] == "crd-component":
            crd_component(argv[2], argv[3])
            return 0
    except (ManifestError, yaml.YAMLError, OSError) as e:
        print(f"manifests.py: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
