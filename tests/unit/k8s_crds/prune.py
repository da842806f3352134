"""Write the pruned CRD schemas the Kubernetes tests check the operators' resources against.

The operators' CRDs are large (the RabbitmqCluster one embeds a whole PodSpec): rather than
commit them, this keeps of each version's ``openAPIV3Schema`` only the subtrees our resources
use. At every object level the names of all the fields the CRD knows stay (an unused one
accepts anything), and unknown names are refused (``additionalProperties: false``, what the
API server's strict field validation does), so a misspelt or invented field fails; the
subtrees we use keep their types, enums, required lists and nesting. Descriptions go.

Run by hand after changing a resource in deploy/k8s/production, with the CRDs from the
operators' repositories (config/crd/bases/ in rabbitmq/cluster-operator and
cloudnative-pg/cloudnative-pg; example/prometheus-operator-crd/ in prometheus-operator):

    python tests/unit/k8s_crds/prune.py SOURCE-NOTE CRD.yaml... < rendered-production.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
_DROP = {"description"}


def prune(schema: dict[str, Any], used: Any) -> dict[str, Any]:
    """``schema`` reduced to what validating ``used`` (one or more instances) needs."""
    instances = used if isinstance(used, list) and used and used[0] is _MANY else [used]
    instances = [i for i in instances if i is not _MANY]
    out = {k: v for k, v in schema.items()
           if k not in _DROP and k not in ("properties", "items", "additionalProperties")}
    props = schema.get("properties")
    if props is not None:
        out["properties"] = {}
        for name, sub in props.items():
            values = [i[name] for i in instances if isinstance(i, dict) and name in i]
            out["properties"][name] = prune(sub, [_MANY, *values]) if values else {}
        if "additionalProperties" not in schema and not schema.get(
                "x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        values = [v for i in instances if isinstance(i, dict) for v in i.values()]
        out["additionalProperties"] = (prune(schema["additionalProperties"], [_MANY, *values])
                                       if values else {})
    if "items" in schema:
        values = [v for i in instances if isinstance(i, list) for v in i]
        out["items"] = prune(schema["items"], [_MANY, *values]) if values else {}
    return out


_MANY = object()


def main() -> None:
    source, *crd_paths = sys.argv[1:]
    rendered = [d for d in yaml.safe_load_all(sys.stdin) if d]
    for path in crd_paths:
        crd = yaml.safe_load(Path(path).read_text())
        kind = crd["spec"]["names"]["kind"]
        group = crd["spec"]["group"]
        used = [d for d in rendered
                if d["kind"] == kind and d["apiVersion"].split("/")[0] == group]
        if not used:
            continue
        version = used[0]["apiVersion"].split("/")[1]
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = prune(served["schema"]["openAPIV3Schema"], [_MANY, *used])
        schema["$comment"] = (f"{group}/{version} {kind}: pruned by tests/unit/k8s_crds/prune.py "
                              f"from {source} {Path(path).name}")
        out = HERE / f"{kind}.{group}.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"{out.name}: {len(out.read_text())} bytes")


if __name__ == "__main__":
    main()
